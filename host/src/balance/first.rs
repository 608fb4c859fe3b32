//! `first`: the first usable server in config order. With per-server `maxconn` this fills
//! one server before the next, so spare servers can be powered down.

use super::{Balancer, RequestKey, Servers};

pub struct First;

impl Balancer for First {
    fn pick(&self, servers: &dyn Servers, _key: &RequestKey<'_>) -> Option<usize> {
        (0..servers.count()).find(|&i| servers.usable(i))
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{Fake, key};
    use super::*;

    #[test]
    fn takes_the_first_usable_server() {
        let mut servers = Fake::new(&[1, 1, 1]);
        assert_eq!(First.pick(&servers, &key("/")), Some(0));
        servers.usable[0] = false;
        assert_eq!(First.pick(&servers, &key("/")), Some(1));
    }
}
