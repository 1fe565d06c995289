//! The principal of a gRPC request, from the client certificate of its
//! connection, and the interceptor that admits a service's callers by role.

use infrawatch_common::role::Role;
use infrawatch_common::tls::peer_from_der;
use tonic::{Request, Status};

use super::{Credential, Principal, Refusal, refused};

/// The principal of `request`: the identity and role of its client certificate,
/// whose role URI must be of `trust_domain`.
pub fn principal<T>(request: &Request<T>, trust_domain: &str) -> Result<Principal, Status> {
    let certs = request
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let peer = peer_from_der(leaf.as_ref())
        .map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))?;
    let Some(role) = peer.role.filter(|r| r.trust_domain == trust_domain) else {
        let message = format!(
            "the certificate of {} names no role of trust domain {trust_domain:?}: it needs a URI subject alternative name spiffe://{trust_domain}/<agent|reader|admin>/<name>",
            peer.name
        );
        refused(Refusal::Role, &peer.name, &message);
        return Err(Status::permission_denied(message));
    };
    Ok(Principal {
        name: peer.name,
        role: role.role,
        credential: Credential::Certificate,
        scope: None,
    })
}

/// Checks that `principal` has a role that `allowed` accepts for `what`.
pub fn require(principal: &Principal, allowed: fn(Role) -> bool, what: &str) -> Result<(), Status> {
    if allowed(principal.role) {
        return Ok(());
    }
    let message = format!(
        "{} has the {} role, which may not {what}",
        principal.name, principal.role
    );
    refused(Refusal::Role, &principal.name, &message);
    Err(Status::permission_denied(message))
}

/// Admits the callers of a service whose role `allowed` accepts, and hands the
/// handlers their [`Principal`] as a request extension.
#[derive(Clone)]
pub struct RoleGate {
    trust_domain: std::sync::Arc<str>,
    allowed: fn(Role) -> bool,
    what: &'static str,
}

impl RoleGate {
    /// A gate for a service that does `what` ("query the model", ...).
    pub fn new(trust_domain: &str, allowed: fn(Role) -> bool, what: &'static str) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            allowed,
            what,
        }
    }
}

impl tonic::service::Interceptor for RoleGate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let who = principal(&request, &self.trust_domain)?;
        require(&who, self.allowed, self.what)?;
        request.extensions_mut().insert(who);
        Ok(request)
    }
}

/// The principal a [`RoleGate`] put on `request`.
pub fn caller<T>(request: &Request<T>) -> Result<&Principal, Status> {
    request.extensions().get::<Principal>().ok_or_else(|| {
        Status::internal("no principal on the request (service not behind a RoleGate)")
    })
}
