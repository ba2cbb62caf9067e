//! Which sinks Warren may call. A subscription names any URL, and the delivery workers run inside
//! the operator's network, so a sink that points at loopback, a private network, link-local (the
//! cloud metadata service at 169.254.169.254) or another non-public address is refused, at
//! creation and again at every connection (the resolver below), so a name that later resolves
//! elsewhere (DNS rebinding) is still refused. `WARREN_DELIVERY_ALLOW_PRIVATE_SINKS=on` lifts
//! this for tests and local development.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// Why a sink URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Not an absolute http or https URL with a host.
    #[error("the sink is an absolute http:// or https:// URL with a host")]
    NotHttp,
    /// A URL with user:password is refused: credentials would be logged and shown.
    #[error("the sink may not carry user:password; use protocolsettings.headers")]
    Credentials,
    /// Resolves to an address Warren must not call.
    #[error("the sink's address {0} is loopback, private, link-local or otherwise not public (WARREN_DELIVERY_ALLOW_PRIVATE_SINKS=on allows it)")]
    NotPublic(IpAddr),
}

/// Checks the URL's form, and the address when the host is an IP literal.
pub fn check_url(sink: &str, allow_private: bool) -> Result<Url, SinkError> {
    let url = Url::parse(sink).map_err(|_| SinkError::NotHttp)?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(SinkError::NotHttp);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(SinkError::Credentials);
    }
    check_host(&url, allow_private)?;
    Ok(url)
}

/// The address rule alone, on a URL already parsed: a literal IP must be public and `localhost`
/// names are refused, unless private sinks are allowed. Names are checked by the resolver.
pub fn check_host(url: &Url, allow_private: bool) -> Result<(), SinkError> {
    if !allow_private {
        if let Some(ip) = literal_ip(url) {
            if !is_public(ip) {
                return Err(SinkError::NotPublic(ip));
            }
        }
        if url.host_str().is_some_and(|host| {
            host.eq_ignore_ascii_case("localhost") || host.ends_with(".localhost")
        }) {
            return Err(SinkError::NotPublic(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        }
    }
    Ok(())
}

/// Resolves the sink's host and refuses it when any address is not public. A name that does not
/// resolve yet is accepted: the resolver checks again at every delivery.
pub async fn check_resolved(url: &Url, allow_private: bool) -> Result<(), SinkError> {
    if allow_private || literal_ip(url).is_some() {
        return Ok(());
    }
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return Err(SinkError::NotHttp);
    };
    if let Ok(addresses) = tokio::net::lookup_host((host, port)).await {
        for address in addresses {
            if !is_public(address.ip()) {
                return Err(SinkError::NotPublic(address.ip()));
            }
        }
    }
    Ok(())
}

fn literal_ip(url: &Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Whether an address is on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(mapped) => is_public_v4(mapped),
            None => is_public_v6(ip),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, _, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT), RFC 6598
        || (a == 198 && (b == 18 || b == 19)) // benchmarking, RFC 2544
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local, fc00::/7
        || (first & 0xffc0) == 0xfe80 // link-local, fe80::/10
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || ip.segments()[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible, deprecated
}

/// reqwest's resolver for sinks: the system's, minus addresses that are not public.
#[derive(Debug, Clone, Copy)]
pub struct PublicOnlyResolver;

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| is_public(a.ip()))
                .collect();
            if public.is_empty() {
                let shown = found
                    .first()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                return Err(format!(
                    "{host} resolves to no public address ({shown}); WARREN_DELIVERY_ALLOW_PRIVATE_SINKS=on allows it"
                )
                .into());
            }
            let addresses: Addrs = Box::new(public.into_iter());
            Ok(addresses)
        })
    }
}

/// The resolver to give the sink client: `None` keeps reqwest's own when private sinks are
/// allowed.
pub fn resolver(allow_private: bool) -> Option<Arc<PublicOnlyResolver>> {
    (!allow_private).then_some(Arc::new(PublicOnlyResolver))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for address in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(address.parse().unwrap()), "{address}");
        }
        for address in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(address.parse().unwrap()), "{address}");
        }
    }

    #[test]
    fn sink_urls_are_http_with_a_host_and_no_credentials() {
        assert!(check_url("https://hooks.example.com/in", false).is_ok());
        assert_eq!(
            check_url("ftp://example.com/", false),
            Err(SinkError::NotHttp)
        );
        assert_eq!(check_url("/relative", false), Err(SinkError::NotHttp));
        assert_eq!(
            check_url("https://user:pw@example.com/", false),
            Err(SinkError::Credentials)
        );
    }

    #[test]
    fn private_sinks_are_refused_unless_allowed() {
        for sink in [
            "http://127.0.0.1:8080/hook",
            "http://[::1]/",
            "http://169.254.169.254/latest/meta-data",
            "http://localhost:9000/",
            "http://10.0.0.5/",
        ] {
            assert!(
                matches!(check_url(sink, false), Err(SinkError::NotPublic(_))),
                "{sink}"
            );
            assert!(check_url(sink, true).is_ok(), "{sink}");
        }
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_that_resolve_to_loopback() {
        let resolved = PublicOnlyResolver
            .resolve("localhost".parse::<Name>().unwrap())
            .await;
        assert!(resolved.is_err());
    }
}
