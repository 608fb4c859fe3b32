//! Plugins through the real proxy: the runtime with compiled fixture components, and the
//! stock plugins embedded in weir. (The deadline tests have a binary of their own: they
//! stall the process-wide epoch thread.)

mod plugins;
mod stock;
