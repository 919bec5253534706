//! MQTT connection options for AWS IoT Core (mutual TLS), a Greengrass core or any broker.

use std::path::Path;
use std::time::Duration;

use rumqttc::{MqttOptions, Transport};

/// How to reach an MQTT broker.
#[derive(Debug, Clone, Copy)]
pub struct MqttEndpoint<'a> {
    pub host: &'a str,
    pub port: u16,
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
    /// The CA to trust; TLS when set.
    pub ca_file: Option<&'a Path>,
    /// Client certificate and key for mutual TLS (AWS IoT Core).
    pub cert_file: Option<&'a Path>,
    pub key_file: Option<&'a Path>,
}

/// Options with a persistent session (clean session off), a 30 s keep-alive, credentials and TLS
/// as the endpoint says. An unreadable TLS file is an error naming the file.
pub fn mqtt_options(e: &MqttEndpoint<'_>) -> Result<MqttOptions, String> {
    let mut o = MqttOptions::new(e.client_id, e.host, e.port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(false);
    if let Some(user) = e.username {
        o.set_credentials(user, e.password.unwrap_or_default());
    }
    if let Some(ca) = e.ca_file {
        let read = |p: &Path| std::fs::read(p).map_err(|err| format!("{}: {err}", p.display()));
        let client_auth = match (e.cert_file, e.key_file) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        o.set_transport(Transport::tls(read(ca)?, client_auth, None));
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_tls_files_are_named() {
        let err = mqtt_options(&MqttEndpoint {
            host: "127.0.0.1",
            port: 8883,
            client_id: "c",
            username: None,
            password: None,
            ca_file: Some(Path::new("/nonexistent/ca.pem")),
            cert_file: None,
            key_file: None,
        })
        .unwrap_err();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        let ok = mqtt_options(&MqttEndpoint {
            host: "127.0.0.1",
            port: 1883,
            client_id: "c",
            username: Some("u"),
            password: Some("p"),
            ca_file: None,
            cert_file: None,
            key_file: None,
        })
        .unwrap();
        assert!(!ok.clean_session());
    }
}
