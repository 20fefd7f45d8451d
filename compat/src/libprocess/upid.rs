//! A libprocess process id (UPID): `<id>@<ip>:<port>`, as `3rdparty/libprocess/src/pid.cpp`
//! writes and reads it. The master is `master@<ip>:<port>`; a scheduler driver is
//! `scheduler-<uuid>@<ip>:<port>`.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::str::FromStr;

use thiserror::Error;

use crate::limits::UPID_BYTES_MAX;

/// Why a text is not a UPID.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UpidError {
    #[error("a UPID is at most {UPID_BYTES_MAX} bytes, this one is {0}")]
    TooLong(usize),
    #[error("a UPID has the form id@ip:port, '{0}' has no '@'")]
    NoAt(String),
    #[error("a UPID has the form id@ip:port, '{0}' has no ':port'")]
    NoPort(String),
    #[error("a UPID's id must not be empty")]
    EmptyId,
    #[error("a UPID's id must not contain '@', whitespace or control characters")]
    BadId,
    #[error("'{0}' is not an IPv4 address (libprocess UPIDs carry one; names are not resolved)")]
    BadIp(String),
    #[error("'{0}' is not a port number")]
    BadPort(String),
}

/// A libprocess process id. The fields are private: every `Upid` has a non-empty id without
/// `@`, whitespace or control characters, and its text is at most [`UPID_BYTES_MAX`] bytes,
/// so it can always be written into a request line and a header.
///
/// libprocess parses IPv4 only (`net::getIP(host, AF_INET)`) and resolves a host name; Shoal
/// resolves nothing, so a UPID naming a host refuses to parse. libmesos always writes the
/// numeric address (`LIBPROCESS_IP`, `LIBPROCESS_ADVERTISE_IP`, or its host's address).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Upid {
    id: String,
    ip: Ipv4Addr,
    port: u16,
}

impl Upid {
    /// A UPID from its parts; the id is checked as [`Upid::from_str`] checks it.
    pub fn new(id: impl Into<String>, ip: Ipv4Addr, port: u16) -> Result<Upid, UpidError> {
        let id = id.into();
        check_id(&id)?;
        let upid = Upid { id, ip, port };
        let len = upid.to_string().len();
        if len > UPID_BYTES_MAX {
            return Err(UpidError::TooLong(len));
        }
        Ok(upid)
    }

    /// The process id, e.g. `master` or `scheduler-6a1f…`.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where the process listens: what a connection to it dials.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.ip, self.port))
    }
}

fn check_id(id: &str) -> Result<(), UpidError> {
    if id.is_empty() {
        return Err(UpidError::EmptyId);
    }
    // libprocess reads a UPID with `stream >> str` (so it ends at whitespace) and takes the id
    // up to the first '@'; such characters cannot be in an id it could read back.
    if id
        .chars()
        .any(|c| c == '@' || c.is_whitespace() || c.is_control())
    {
        return Err(UpidError::BadId);
    }
    Ok(())
}

impl FromStr for Upid {
    type Err = UpidError;

    /// Reads `id@ip:port` as libprocess does: the id is everything before the first `@`, the
    /// port everything after the last `:`. Surrounding whitespace is trimmed (libprocess trims
    /// `Libprocess-From`). Unlike libprocess's `sscanf("%hu")`, the port must be all digits.
    fn from_str(s: &str) -> Result<Upid, UpidError> {
        let s = s.trim();
        if s.len() > UPID_BYTES_MAX {
            return Err(UpidError::TooLong(s.len()));
        }
        let (id, rest) = s.split_once('@').ok_or_else(|| UpidError::NoAt(s.into()))?;
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| UpidError::NoPort(s.into()))?;
        check_id(id)?;
        let ip = Ipv4Addr::from_str(host).map_err(|_| UpidError::BadIp(host.into()))?;
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(UpidError::BadPort(port.into()));
        }
        let port = u16::from_str(port).map_err(|_| UpidError::BadPort(port.into()))?;
        Ok(Upid {
            id: id.to_owned(),
            ip,
            port,
        })
    }
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}:{}", self.id, self.ip, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints_as_libprocess() {
        let pid: Upid = "scheduler-6a1f0c2e-1d2b-4c3d-9e8f-001122334455@10.0.0.9:41234"
            .parse()
            .unwrap();
        assert_eq!(pid.id(), "scheduler-6a1f0c2e-1d2b-4c3d-9e8f-001122334455");
        assert_eq!(pid.ip(), Ipv4Addr::new(10, 0, 0, 9));
        assert_eq!(pid.port(), 41234);
        assert_eq!(
            pid.to_string(),
            "scheduler-6a1f0c2e-1d2b-4c3d-9e8f-001122334455@10.0.0.9:41234"
        );
        assert_eq!(pid.addr(), "10.0.0.9:41234".parse().unwrap());
        let agent: Upid = " slave(1)@127.0.0.1:5051\r\n".parse().unwrap();
        assert_eq!(agent.id(), "slave(1)");
        assert_eq!(agent.to_string(), "slave(1)@127.0.0.1:5051");
        assert_eq!(
            Upid::new("master", Ipv4Addr::LOCALHOST, 5050)
                .unwrap()
                .to_string(),
            "master@127.0.0.1:5050"
        );
    }

    #[test]
    fn refuses_what_is_not_a_upid() {
        let bad = [
            ("", UpidError::NoAt(String::new())),
            ("master", UpidError::NoAt("master".into())),
            (
                "master@127.0.0.1",
                UpidError::NoPort("master@127.0.0.1".into()),
            ),
            ("@127.0.0.1:5050", UpidError::EmptyId),
            ("a b@127.0.0.1:5050", UpidError::BadId),
            ("m@localhost:5050", UpidError::BadIp("localhost".into())),
            ("m@::1:5050", UpidError::BadIp("::1".into())),
            ("m@127.0.0.1:", UpidError::BadPort(String::new())),
            ("m@127.0.0.1:+5", UpidError::BadPort("+5".into())),
            ("m@127.0.0.1:65536", UpidError::BadPort("65536".into())),
            ("m@127.0.0.1:50x", UpidError::BadPort("50x".into())),
        ];
        for (text, want) in bad {
            assert_eq!(text.parse::<Upid>(), Err(want), "{text:?}");
        }
        let long = format!("{}@127.0.0.1:1", "x".repeat(UPID_BYTES_MAX));
        assert!(matches!(long.parse::<Upid>(), Err(UpidError::TooLong(_))));
        assert!(Upid::new("x".repeat(UPID_BYTES_MAX), Ipv4Addr::LOCALHOST, 1).is_err());
        assert_eq!(
            Upid::new("a@b", Ipv4Addr::LOCALHOST, 1),
            Err(UpidError::BadId)
        );
    }

    proptest! {
        #[test]
        fn any_text_parses_or_errs(s in ".{0,300}") {
            let _ = s.parse::<Upid>();
        }

        #[test]
        fn round_trips(id in "[a-z0-9()._-]{1,64}", ip: u32, port: u16) {
            let pid = Upid::new(id, Ipv4Addr::from(ip), port).unwrap();
            prop_assert_eq!(pid.to_string().parse::<Upid>().unwrap(), pid);
        }
    }
}
