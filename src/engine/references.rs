//! The Secrets and ConfigMaps a spec names: what its digest covers, what an
//! adapter reads for it, and how the controller maps a changed Secret back to
//! the resources that name it.

use crate::api::{IncomingEmailServerSpec, OutgoingEmailServerSpec, ProxySpec, TlsSpec};

/// Names of the Secrets and ConfigMaps a spec refers to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    pub secrets: Vec<String>,
    pub config_maps: Vec<String>,
}

impl Names {
    fn add_tls(&mut self, tls: Option<&TlsSpec>) {
        if let Some(t) = tls {
            if let Some(r) = &t.ca_secret_ref {
                self.secrets.push(r.name.clone());
            }
            if let Some(r) = &t.ca_config_map_ref {
                self.config_maps.push(r.name.clone());
            }
        }
    }

    fn add_proxy(&mut self, proxy: Option<&ProxySpec>) {
        if let Some(r) = proxy.and_then(|p| p.credentials_secret_ref.as_ref()) {
            self.secrets.push(r.name.clone());
        }
    }

    fn done(mut self) -> Self {
        self.secrets.sort();
        self.secrets.dedup();
        self.config_maps.sort();
        self.config_maps.dedup();
        self
    }

    pub fn incoming(spec: &IncomingEmailServerSpec) -> Self {
        let mut n = Self::default();
        if let Some(r) = &spec.auth.password_secret_ref {
            n.secrets.push(r.name.clone());
        }
        if let Some(o) = &spec.auth.oauth2 {
            n.secrets.push(o.secret_ref.name.clone());
        }
        if let Some(r) = spec
            .ticket
            .sink
            .as_ref()
            .and_then(|s| s.webhook.as_ref())
            .and_then(|w| w.signing_secret_ref.as_ref())
        {
            n.secrets.push(r.name.clone());
        }
        n.add_tls(spec.tls.as_ref());
        n.add_proxy(spec.proxy.as_ref());
        n.done()
    }

    pub fn outgoing(spec: &OutgoingEmailServerSpec) -> Self {
        let mut n = Self::default();
        if let Some(r) = &spec.authentication.password_secret_ref {
            n.secrets.push(r.name.clone());
        }
        if let Some(o) = &spec.authentication.oauth2 {
            n.secrets.push(o.secret_ref.name.clone());
        }
        n.add_tls(spec.tls.as_ref());
        n.add_proxy(spec.proxy.as_ref());
        n.done()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_every_reference() {
        let spec: IncomingEmailServerSpec = serde_json::from_value(serde_json::json!({
            "email": "a@example.com",
            "provider": "Gmail",
            "auth": {"passwordSecretRef": {"name": "pw", "key": "password"}},
            "tls": {"caSecretRef": {"name": "ca", "key": "ca.crt"}, "caConfigMapRef": {"name": "bundle", "key": "ca.crt"}},
            "ticket": {"sink": {"webhook": {"url": "https://h.example/t", "signingSecretRef": {"name": "hook", "key": "k"}}}},
        }))
        .unwrap();
        let n = Names::incoming(&spec);
        assert_eq!(n.secrets, ["ca", "hook", "pw"]);
        assert_eq!(n.config_maps, ["bundle"]);
    }
}
