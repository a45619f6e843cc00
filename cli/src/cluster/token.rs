//! The namespace's session token: the Secret `mirrord-session-token`, which
//! the injector mounts into every sidecar of the namespace. `connect` reads
//! it (`get` on that one Secret is what RBAC grants); `inject` makes it when
//! missing; `token rotate` replaces it.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use mirrord_config::names::{TOKEN_KEY, TOKEN_SECRET};

use super::{Cluster, Error, FIELD_MANAGER};

impl Cluster {
    /// The namespace's session token: key `token` of the Secret
    /// `mirrord-session-token`, which the injector mounts into every sidecar
    /// of the namespace (`get` on that one Secret is what RBAC grants).
    pub async fn session_token(&self) -> Result<String, Error> {
        let secret = self
            .bounded("reading the session token", async {
                self.api::<k8s_openapi::api::core::v1::Secret>()
                    .get_opt(TOKEN_SECRET)
                    .await
                    .map_err(|e| self.failed(e, "get", "secrets", Some(TOKEN_SECRET)))
            })
            .await?;
        let no_token = |why| Error::NoToken { namespace: self.namespace.clone(), why };
        let secret = secret.ok_or_else(|| no_token(" does not exist"))?;
        let value = secret.data.and_then(|mut d| d.remove(TOKEN_KEY)).ok_or_else(|| no_token(" has no key token"))?;
        let token = String::from_utf8(value.0).map_err(|_| no_token(": its token is not text"))?;
        let token = token.trim();
        if token.is_empty() {
            return Err(no_token(": its token is empty"));
        }
        Ok(token.to_owned())
    }

    /// Creates the namespace's session token when it has none; true when it
    /// was created.
    pub async fn ensure_session_token(&self) -> Result<bool, Error> {
        let api: Api<Secret> = self.api();
        let exists = self
            .bounded("reading the session token", async {
                api.get_opt(TOKEN_SECRET).await.map_err(|e| self.failed(e, "get", "secrets", Some(TOKEN_SECRET)))
            })
            .await?
            .is_some();
        if exists {
            return Ok(false);
        }
        let mut secret = Secret::default();
        secret.metadata.name = Some(TOKEN_SECRET.to_owned());
        secret.metadata.labels =
            Some([("app.kubernetes.io/part-of".to_owned(), "mirrord".to_owned())].into_iter().collect());
        secret.type_ = Some("Opaque".to_owned());
        secret.data = Some([(TOKEN_KEY.to_owned(), fresh_token()?)].into_iter().collect());
        let params = PostParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..Default::default() };
        self.bounded("creating the session token", async {
            match api.create(&params, &secret).await {
                Ok(_) => Ok(true),
                // Made meanwhile by someone else: theirs stands.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(self.failed(e, "create", "secrets", None)),
            }
        })
        .await
    }

    /// A new token in the namespace's Secret (made when missing).
    pub async fn rotate_session_token(&self) -> Result<(), Error> {
        if self.ensure_session_token().await? {
            return Ok(());
        }
        let patch = serde_json::json!({"data": {TOKEN_KEY: fresh_token()?}});
        self.merge_patch(self.api::<Secret>(), "secrets", TOKEN_SECRET, &patch).await
    }
}

/// 256 random bits, in hex, as the Secret stores them.
fn fresh_token() -> Result<k8s_openapi::ByteString, Error> {
    let token = mirrord_api::random_hex(32).map_err(|e| Error::Api {
        verb: "create",
        resource: format!("secrets/{TOKEN_SECRET}"),
        message: format!("no randomness for a token: {e}"),
    })?;
    Ok(k8s_openapi::ByteString(token.into_bytes()))
}
