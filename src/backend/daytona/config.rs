//! How benchwarden reaches the Daytona API: its base URL and credentials
//! (resolved from the environment and the benchmark file by `settings`).
//! Credentials never leave here in text: `Debug` redacts them and no error
//! message includes them.

use std::fmt;

pub(crate) const DEFAULT_API_URL: &str = "https://app.daytona.io/api";

/// How we authenticate; never printed.
#[derive(Clone)]
pub enum Credentials {
    ApiKey(String),
    Jwt { token: String, organization_id: String },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::ApiKey(_) => f.write_str("ApiKey(<redacted>)"),
            Credentials::Jwt { organization_id, .. } => write!(f, "Jwt(<redacted>, organization {organization_id})"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DaytonaConfig {
    /// Base URL including `/api`.
    pub api_url: String,
    pub credentials: Credentials,
    pub target: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_print() {
        let config = DaytonaConfig {
            api_url: "http://x/api".into(),
            credentials: Credentials::ApiKey("secret-key-123".into()),
            target: None,
        };
        assert!(!format!("{config:?}").contains("secret-key-123"));
    }
}
