//! Client roles and the certificate names that carry them.
//!
//! A client certificate states its role in a SPIFFE-style URI subject alternative
//! name, `spiffe://<trust-domain>/<role>/<name>`, for example
//! `spiffe://infrawatch/agent/node-1`. A URI SAN was chosen over a private
//! extended key usage because every issuer can write one (cert-manager's
//! `Certificate.spec.uris`, its csi-driver's `csi.cert-manager.io/uri-sans`,
//! `openssl -addext subjectAltName=URI:...`, SPIRE), it is readable in
//! `openssl x509 -text`, and it keeps the role and the name in one place that a
//! client cannot change without a new certificate. Bearer tokens carry the same
//! roles in the aggregator's configuration.

use std::fmt;

/// The trust domain of development certificates and of the aggregator's default
/// configuration.
pub const DEFAULT_TRUST_DOMAIN: &str = "infrawatch";

/// What a client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reports its own host and what hangs off it; nothing else.
    Agent,
    /// Queries, watches events, and keeps its own durable subscriptions.
    Reader,
    /// Everything a reader may, plus the subscriptions of others and the
    /// machine bindings of agents.
    Admin,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 3] = [Role::Agent, Role::Reader, Role::Admin];

    /// The name used in certificates, tokens and messages.
    pub fn name(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Reader => "reader",
            Role::Admin => "admin",
        }
    }

    /// Parses a role name (`agent`, `reader`, `admin`).
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// May send reports on the agent stream.
    pub fn may_report(self) -> bool {
        self == Role::Agent
    }

    /// May query the model and read events.
    pub fn may_read(self) -> bool {
        matches!(self, Role::Reader | Role::Admin)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Role::parse(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown role {name:?}: expected agent, reader or admin"
            ))
        })
    }
}

/// The URI SAN of a client certificate with `role` and `name`.
pub fn spiffe_uri(trust_domain: &str, role: Role, name: &str) -> String {
    format!("spiffe://{trust_domain}/{role}/{name}")
}

/// A role-bearing URI SAN taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleUri {
    /// The trust domain (the URI's host).
    pub trust_domain: String,
    /// The role (the first path segment).
    pub role: Role,
    /// The client's name (the rest of the path).
    pub name: String,
}

/// Parses `spiffe://<trust-domain>/<role>/<name>`; `None` for any other URI.
pub fn parse_spiffe_uri(uri: &str) -> Option<RoleUri> {
    let rest = uri.strip_prefix("spiffe://")?;
    let (trust_domain, path) = rest.split_once('/')?;
    let (role, name) = path.split_once('/')?;
    let role = Role::parse(role)?;
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '/'));
    (!trust_domain.is_empty() && valid_name).then(|| RoleUri {
        trust_domain: trust_domain.to_string(),
        role,
        name: name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_uri_round_trips_and_other_uris_are_not_roles() {
        let uri = spiffe_uri("infrawatch", Role::Agent, "node-1");
        assert_eq!(uri, "spiffe://infrawatch/agent/node-1");
        assert_eq!(
            parse_spiffe_uri(&uri),
            Some(RoleUri {
                trust_domain: "infrawatch".into(),
                role: Role::Agent,
                name: "node-1".into()
            })
        );
        for other in [
            "https://infrawatch/agent/node-1",
            "spiffe://infrawatch/root/node-1",
            "spiffe://infrawatch/agent/",
            "spiffe:///agent/node-1",
            "spiffe://cluster.local/ns/infrawatch/sa/agent",
            "spiffe://infrawatch/agent/node 1",
        ] {
            assert_eq!(parse_spiffe_uri(other), None, "{other}");
        }
    }

    #[test]
    fn only_agents_report_and_only_readers_and_admins_read() {
        assert!(Role::Agent.may_report() && !Role::Agent.may_read());
        assert!(Role::Reader.may_read() && !Role::Reader.may_report());
        assert!(Role::Admin.may_read() && !Role::Admin.may_report());
        assert_eq!(Role::parse("admin"), Some(Role::Admin));
        assert_eq!(Role::parse("Admin"), None);
    }
}
