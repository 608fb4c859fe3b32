//! The `weir` command line: run, check, health, demo.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weir::{AccessLog, Config};

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "A high-availability HTTP load balancer and reverse proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a config file.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and exit: 0 when it is valid, 1 with every error otherwise.
    /// With --against, also say what it would change in the weir running there: what a
    /// reload applies, and what needs a restart (then exit 2).
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// A running weir's admin listener, `[user:password@]host:port`.
        #[arg(long)]
        against: Option<String>,
    },
    /// Whether a running weir can serve, as an exit code (0 yes, 1 no) and one line: for
    /// a keepalived `vrrp_script`. Asks the admin listener's /healthz.
    Health {
        /// The admin listener's address; by default the `[admin] bind` of --config, else
        /// 127.0.0.1:8404.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        /// The running weir's config file, for its admin address.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Also send one request through a frontend (an http:// URL); an answer below 500
        /// passes.
        #[arg(long)]
        through: Option<String>,
        /// Time allowed for each exchange.
        #[arg(long, default_value = "2s", value_parser = weir::config::units::parse_duration)]
        timeout: Duration,
    },
    /// Start three demo servers and the proxy on the quickstart config.
    Demo,
    /// Translate an HAProxy configuration into weir's TOML (on stdout, or OUT), listing on
    /// stderr every line not carried over or carried over in part. Exit status: 0 when
    /// everything was carried over, 2 when something was left out, 1 when the file is not
    /// valid HAProxy syntax.
    Import {
        /// The haproxy.cfg to read.
        file: PathBuf,
        /// Where to write the TOML (stdout by default).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Write a plugin project, or check a built plugin component.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Write a plugin project that builds as it is: Cargo.toml, src/lib.rs with the hooks
    /// asked for and their unit tests, a weir.toml that loads it, and a README.
    New {
        /// The plugin's name, and the project's directory (lower-case letters, digits, -).
        name: String,
        /// The hooks to start with, of request, response, health, connect.
        #[arg(long, default_value = "request")]
        hooks: String,
        /// The weir-sdk crate to depend on; by default the SDK of the weir checkout this
        /// binary was built from.
        #[arg(long)]
        sdk: Option<PathBuf>,
        /// Where to write the project (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Load a plugin component as weir would, configure it, and print what it declares (or
    /// why weir would refuse it). Exit status 0 when it loads, 1 otherwise.
    Check {
        /// The component (`.wasm`).
        file: PathBuf,
        /// The JSON handed to its `configure` (a plugin table's `config`).
        #[arg(long, default_value = "{}")]
        config: String,
    },
}

/// mimalloc, called the way it is fast ([`weir::alloc`]).
#[global_allocator]
static ALLOC: weir::alloc::Allocator = weir::alloc::Allocator;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let written = weir::logging::to_stderr();
    if let Err(e) = weir::alloc::without_huge_pages() {
        tracing::warn!("could not turn transparent huge pages off: {e}");
    }
    let result = match cli.command {
        Command::Check { config, against } => return check(&config, against.as_deref()),
        Command::Import { file, output } => return import(&file, output.as_deref()),
        Command::Plugin {
            command:
                PluginCommand::New {
                    name,
                    hooks,
                    sdk,
                    dir,
                },
        } => return plugin_new(&name, &hooks, sdk, dir),
        Command::Plugin {
            command: PluginCommand::Check { file, config },
        } => return plugin_check(&file, &config),
        Command::Health {
            admin,
            config,
            through,
            timeout,
        } => return health(admin, config.as_deref(), through.as_deref(), timeout),
        Command::Run { config: path } => load(&path).and_then(|c| run(c, Some(path))),
        Command::Demo => Config::from_toml(weir::demo::QUICKSTART, Path::new("examples"))
            .map_err(|e| anyhow::anyhow!("{e}"))
            .and_then(|c| run(c, None)),
    };
    drop(written);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn import(file: &Path, output: Option<&Path>) -> ExitCode {
    let name = file.display().to_string();
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("weir import: cannot read {name}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
            eprintln!("{name}:{line}: not UTF-8 text: this is not an HAProxy configuration");
            return ExitCode::FAILURE;
        }
    };
    let imported = match weir::import::import(&text, &name, &|v| std::env::var(v).ok()) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("{name}:{}: {}", e.line, e.message);
            return ExitCode::FAILURE;
        }
    };
    let written = match output {
        Some(out) => std::fs::write(out, &imported.toml),
        None => std::io::Write::write_all(&mut std::io::stdout(), imported.toml.as_bytes()),
    };
    if let Err(e) = written {
        eprintln!("weir import: cannot write the TOML: {e}");
        return ExitCode::FAILURE;
    }
    for n in &imported.notes {
        eprintln!("{name}:{n}");
    }
    if imported.notes.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "weir import: {} lines of {name} not carried over or carried over in part",
            imported.notes.len()
        );
        ExitCode::from(2)
    }
}

fn check(path: &Path, against: Option<&str>) -> ExitCode {
    match Config::from_file(path) {
        // Loading and configuring every plugin is part of the check.
        Ok(config) => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(weir::check(&config)))
        {
            Ok(_) => {
                println!("configuration is valid");
                let Some(against) = against else {
                    return ExitCode::SUCCESS;
                };
                match weir::admin::against::ask(&config, against, Duration::from_secs(5)) {
                    Ok(d) => {
                        for line in &d.applies {
                            println!("applies at reload: {line}");
                        }
                        for line in &d.restart {
                            println!("needs a restart: {line}");
                        }
                        if d.restart.is_empty() {
                            ExitCode::SUCCESS
                        } else {
                            ExitCode::from(2)
                        }
                    }
                    Err(e) => {
                        eprintln!("weir check --against: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                ExitCode::FAILURE
            }
        },
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{}: {e}", path.display());
            }
            ExitCode::FAILURE
        }
    }
}

/// `weir plugin new`.
fn plugin_new(name: &str, hooks: &str, sdk: Option<PathBuf>, dir: Option<PathBuf>) -> ExitCode {
    let written = (|| {
        weir::scaffold::check_name(name)?;
        let hooks = weir::scaffold::Hook::parse_list(hooks)?;
        let sdk = weir::scaffold::find_sdk(sdk.as_deref())?;
        let rust_version = weir::scaffold::rust_version(&sdk)?;
        let dir = dir.unwrap_or_else(|| PathBuf::from(name));
        let project = weir::scaffold::Project {
            name,
            hooks: &hooks,
            sdk: &sdk,
            rust_version: &rust_version,
        };
        weir::scaffold::write(&project, &dir).map(|files| (dir, files))
    })();
    match written {
        Ok((dir, files)) => {
            for file in files {
                println!("wrote {}", file.display());
            }
            println!(
                "next: cd {} && cargo test && cargo build --release --target wasm32-wasip2",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weir plugin new: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `weir plugin check`.
fn plugin_check(file: &Path, config: &str) -> ExitCode {
    let shown = file.display();
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{shown}: cannot read: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = serde_json::from_str::<serde_json::Value>(config) {
        eprintln!("--config: not JSON: {e}");
        return ExitCode::FAILURE;
    }
    let name = file
        .file_stem()
        .map_or_else(|| "plugin".into(), |s| s.to_string_lossy().into_owned());
    let inspected = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(weir::plugin::inspect(&name, &bytes, config))
                .map_err(|e| e.to_string())
        });
    match inspected {
        Ok(i) => {
            print!("{i}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{shown}: weir would refuse it: {e}");
            ExitCode::FAILURE
        }
    }
}

fn health(
    admin: Option<std::net::SocketAddr>,
    config: Option<&Path>,
    through: Option<&str>,
    timeout: Duration,
) -> ExitCode {
    let admin = match (admin, config) {
        (Some(addr), _) => addr,
        (None, Some(path)) => match load(path) {
            Ok(c) => match c.admin {
                Some(a) if a.bind.port() != 0 => a.bind,
                Some(_) => return down(&format!("down: {}: [admin] binds port 0", path.display())),
                None => return down(&format!("down: {}: no [admin] section", path.display())),
            },
            Err(e) => return down(&format!("down: {e:#}")),
        },
        (None, None) => std::net::SocketAddr::from(([127, 0, 0, 1], 8404)),
    };
    match weir::admin::health::ask(admin, through, timeout) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(line) => down(&line),
    }
}

fn down(line: &str) -> ExitCode {
    println!("{line}");
    ExitCode::FAILURE
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Config::from_file(path).map_err(|errors| invalid(path, errors))
}

fn invalid(path: &Path, errors: weir::config::ConfigErrors) -> anyhow::Error {
    let lines: Vec<String> = errors
        .0
        .iter()
        .map(|e| format!("{}: {e}", path.display()))
        .collect();
    anyhow::anyhow!("invalid configuration\n{}", lines.join("\n"))
}

/// Runs the proxy; with a config file (not the demo), SIGHUP reloads it.
fn run(config: Config, file: Option<PathBuf>) -> anyhow::Result<()> {
    let demo = file.is_none();
    let runtime = match config.global.threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
    .context("starting the runtime")?;
    runtime.block_on(async move {
        if demo {
            let servers = weir::demo::start_servers().await?;
            tracing::info!("demo servers on {servers:?}");
        }
        let log = AccessLog::for_target(&config.global.access_log).with_context(|| {
            format!("global.access_log: cannot open {:?}", config.global.access_log)
        })?;
        let running = weir::start(&config, log).await?;
        if demo {
            let addr = running.addr("www");
            println!("weir demo is running. Try:");
            println!(
                "  curl -s http://{addr}/hello            # answered in turn by web1, web2, web3"
            );
            println!("  curl -s --http2-prior-knowledge http://{addr}/h2");
            println!("  curl -s -H 'Host: example.com' http://{addr}/whoami");
            if let Some(admin) = running.admin_addr() {
                println!("Statistics: http://{admin}/ (CSV at /;csv, Prometheus at /metrics)");
            }
            println!("Press Ctrl-C to stop.");
        }
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let mut usr1 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
        let stop = stop_signals()?;
        tokio::pin!(stop);
        // Ready once the signals are handled too: a SIGHUP (systemctl reload) sent right
        // after READY=1 must reload, not end the process.
        weir::notify::ready(&format!("serving, generation {}", running.generation()));
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = usr1.recv() => {
                    tracing::info!("SIGUSR1: reopening the access log");
                    running.control().log().reopen();
                }
                _ = hup.recv(), if file.is_some() => {
                    let path = file.as_deref().expect("checked above");
                    weir::notify::reloading();
                    let status = match Config::reread(path).await.map_err(|e| invalid(path, e)) {
                        Ok(new) => match running.reload(&new).await {
                            Ok(generation) => format!("serving, generation {generation}"),
                            Err(e) => {
                                tracing::error!("reload refused, the running configuration stays: {e}");
                                format!("reload refused, generation {} serving", running.generation())
                            }
                        },
                        Err(e) => {
                            running.control().note_failed_reload();
                            tracing::error!("reload refused, the running configuration stays: {e:#}");
                            format!("reload refused, generation {} serving", running.generation())
                        }
                    };
                    weir::notify::ready(&status);
                }
            }
        }
        weir::notify::stopping();
        tracing::info!("stopping: no new connections, finishing requests in flight");
        let grace = running.control().timeout_shutdown();
        let log = running.control().log();
        let left = running.shutdown(grace).await;
        if left > 0 {
            tracing::warn!("{left} connections still open after timeout.shutdown ({grace:?}); closing them");
        }
        // The lines of the last requests may still be queued for the writer thread.
        log.flush(Duration::from_secs(2));
        Ok(())
    })
}

/// SIGINT or SIGTERM, handled from now on (not from the first poll: a stop signal sent
/// right after weir said it was ready must stop it gracefully, not kill it).
fn stop_signals() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
