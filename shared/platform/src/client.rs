//! The ThingWorx REST client: one pooled keep-alive HTTP client per platform, `appKey` and
//! `Accept: application/json` on every call, `Content-Type: application/json` on every write.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Map, Value};
use tracing::debug;
use twinbridge_core::PropertyModel;

use crate::config::PlatformConfig;
use crate::error::{snippet, PlatformError};
use crate::infotable::InfoTable;
use crate::request::{self, PropertyDefinition, Vtq};
use crate::value::PropertyValue;

/// The largest answer body the client reads (a GetEntityList of a big fleet is a few MB).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// A Thing to create from a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewThing {
    pub name: String,
    pub template: String,
    pub description: String,
    /// `Vocabulary:Term` tags.
    pub tags: Vec<String>,
}

/// A client of one ThingWorx server. Cheap to clone (the connection pool is shared).
#[derive(Clone, Debug)]
pub struct PlatformClient {
    http: reqwest::Client,
    base: Url,
}

/// A request body: a JSON value, or JSON already serialized (the write path builds its bodies
/// straight into bytes).
enum Body<'a> {
    Json(&'a Value),
    Bytes(Vec<u8>),
}

impl PlatformClient {
    /// Builds the client; fails on a bad URL, an unreadable CA file or a forbidden extra header.
    pub fn new(config: PlatformConfig) -> Result<Self, PlatformError> {
        let base = Url::parse(config.base_url.trim_end_matches('/'))
            .map_err(|e| PlatformError::Config(format!("base URL {:?}: {e}", config.base_url)))?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(PlatformError::Config(format!(
                "base URL {:?} must be an http(s) URL",
                config.base_url
            )));
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &config.extra_headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| PlatformError::Config(format!("extra header {name:?}: {e}")))?;
            if header == ACCEPT || header == CONTENT_TYPE || header.as_str() == "appkey" {
                return Err(PlatformError::Config(format!(
                    "extra header {name:?} may not replace a header the client sets"
                )));
            }
            let value = HeaderValue::from_str(value)
                .map_err(|e| PlatformError::Config(format!("extra header {name:?}: {e}")))?;
            headers.insert(header, value);
        }
        let mut key = HeaderValue::from_str(config.app_key.expose())
            .map_err(|_| PlatformError::Config("appKey is not a valid header value".into()))?;
        key.set_sensitive(true);
        headers.insert(HeaderName::from_static("appkey"), key);
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));

        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(Duration::from_secs(30))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &config.tls.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| PlatformError::Config(format!("CA file {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| PlatformError::Config(format!("CA file {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(PlatformError::Config(format!(
                    "CA file {} holds no certificate",
                    path.display()
                )));
            }
            builder = builder.tls_certs_merge(certs);
        }
        if config.tls.accept_invalid_certs {
            tracing::warn!(url = %base, "tls certificate verification is disabled");
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let http = builder
            .build()
            .map_err(|e| PlatformError::Config(format!("http client: {e}")))?;
        Ok(PlatformClient { http, base })
    }

    /// The base URL (up to and including `/Thingworx`).
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    fn url(&self, segments: &[&str]) -> Result<Url, PlatformError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|_| PlatformError::Config("base URL cannot take a path".into()))?
            .extend(segments);
        Ok(url)
    }

    /// Sends one request and returns the status and body of a 2xx answer; everything else
    /// becomes a classified [`PlatformError`]. Counts the call by `operation` and outcome class
    /// (`twinbridge_platform_calls_total`).
    async fn send(
        &self,
        operation: &'static str,
        method: Method,
        segments: &[&str],
        body: Option<Body<'_>>,
        what: &str,
    ) -> Result<(StatusCode, Vec<u8>), PlatformError> {
        let result = self.send_uncounted(method, segments, body, what).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.class(),
        };
        metrics::counter!("twinbridge_platform_calls_total", "operation" => operation, "outcome" => outcome)
            .increment(1);
        result
    }

    async fn send_uncounted(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<Body<'_>>,
        what: &str,
    ) -> Result<(StatusCode, Vec<u8>), PlatformError> {
        let url = self.url(segments)?;
        let mut req = self.http.request(method.clone(), url);
        if method != Method::GET {
            // Every write carries a JSON body, `{}` when there are no inputs (CSRF filter).
            let bytes = match body {
                Some(Body::Json(b)) => serde_json::to_vec(b)
                    .map_err(|e| PlatformError::Config(format!("{what}: encode body: {e}")))?,
                Some(Body::Bytes(b)) => b,
                None => b"{}".to_vec(),
            };
            req = req
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(bytes);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| PlatformError::from_transport(&e, what))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = read_body(resp, what).await?;
        debug!(
            what,
            status = status.as_u16(),
            bytes = bytes.len(),
            "platform answered"
        );
        if status.is_success() {
            Ok((status, bytes))
        } else {
            Err(PlatformError::from_status(
                status,
                retry_after.as_deref(),
                &bytes,
                what,
            ))
        }
    }

    /// Sends a request whose answer must be an InfoTable (an empty body reads as an empty table).
    async fn send_for_table(
        &self,
        operation: &'static str,
        method: Method,
        segments: &[&str],
        body: Option<Body<'_>>,
        what: &str,
    ) -> Result<InfoTable, PlatformError> {
        let (status, bytes) = self.send(operation, method, segments, body, what).await?;
        parse_table(status, &bytes, what)
    }

    /// Names of the Things carrying `tag` (`Vocabulary:Term`), at most `max_items`, optionally
    /// restricted by a `nameMask` with `*` wildcards (page a large fleet by mask).
    pub async fn list_things_by_tag(
        &self,
        tag: &str,
        max_items: u32,
        name_mask: Option<&str>,
    ) -> Result<Vec<String>, PlatformError> {
        let body = request::get_entity_list_body(tag, max_items, name_mask);
        let table = self
            .send_for_table(
                "GetEntityList",
                Method::POST,
                &["Resources", "EntityServices", "Services", "GetEntityList"],
                Some(Body::Json(&body)),
                "GetEntityList",
            )
            .await?;
        Ok(request::parse_entity_names(&table))
    }

    /// The property definitions of a Thing, optionally only those of one category.
    pub async fn property_definitions(
        &self,
        thing: &str,
        category: Option<&str>,
    ) -> Result<Vec<PropertyDefinition>, PlatformError> {
        let body = request::get_property_definitions_body(category);
        let table = self
            .send_for_table(
                "GetPropertyDefinitions",
                Method::POST,
                &["Things", thing, "Services", "GetPropertyDefinitions"],
                Some(Body::Json(&body)),
                &format!("GetPropertyDefinitions of {thing}"),
            )
            .await?;
        let mut defs = request::parse_property_definitions(&table);
        // Tolerate a platform that ignores the filter.
        if let Some(c) = category {
            defs.retain(|d| d.category.is_empty() || d.category == c);
        }
        Ok(defs)
    }

    /// The property model of a Thing built from the definitions in the given categories.
    pub async fn property_model(
        &self,
        thing: &str,
        categories: &[&str],
    ) -> Result<PropertyModel, PlatformError> {
        let mut model = PropertyModel::default();
        for category in categories {
            for d in self.property_definitions(thing, Some(category)).await? {
                let category = if d.category.is_empty() {
                    category.to_string()
                } else {
                    d.category
                };
                model.insert(d.name, d.base_type, &category);
            }
        }
        Ok(model)
    }

    /// All current property values of a Thing (the row may also hold built-ins such as `name`).
    pub async fn read_properties(&self, thing: &str) -> Result<Map<String, Value>, PlatformError> {
        let what = format!("properties of {thing}");
        let table = self
            .send_for_table(
                "GetProperties",
                Method::GET,
                &["Things", thing, "Properties"],
                None,
                &what,
            )
            .await?;
        Ok(table.rows.into_iter().next().unwrap_or_default())
    }

    /// The current value of one property.
    pub async fn read_property(&self, thing: &str, property: &str) -> Result<Value, PlatformError> {
        let what = format!("property {property} of {thing}");
        let (status, bytes) = self
            .send(
                "GetProperty",
                Method::GET,
                &["Things", thing, "Properties", property],
                None,
                &what,
            )
            .await?;
        let table = parse_table(status, &bytes, &what)?;
        table
            .first_row()
            .and_then(|r| r.get(property))
            .cloned()
            .ok_or_else(|| PlatformError::InvalidResponse {
                status: status.as_u16(),
                what,
                snippet: snippet(&bytes),
            })
    }

    /// Writes timestamped values in one call (`UpdatePropertyValues` with a NamedVTQ table).
    pub async fn update_property_values(
        &self,
        thing: &str,
        values: &[Vtq],
    ) -> Result<(), PlatformError> {
        if values.is_empty() {
            return Ok(());
        }
        let body = request::update_property_values_body(values).map_err(|e| {
            PlatformError::Config(format!("UpdatePropertyValues of {thing}: encode body: {e}"))
        })?;
        self.send(
            "UpdatePropertyValues",
            Method::POST,
            &["Things", thing, "Services", "UpdatePropertyValues"],
            Some(Body::Bytes(body)),
            &format!("UpdatePropertyValues of {thing}"),
        )
        .await
        .map(|_| ())
    }

    /// Writes many Things' values in one call of a bulk service (`POST /Things/{gateway}/
    /// Services/{service}`, input `values`: one row per value with its `thing`; see
    /// docs/platform.md, "Bulk writes"). The service writes each Thing's rows with
    /// `UpdatePropertyValues` and answers the Things it could not write: rows `{thing, status,
    /// message}` (an empty table when all were written). A Thing it names was not written at all.
    pub async fn bulk_write(
        &self,
        gateway: &str,
        service: &str,
        batch: &[(&str, &[Vtq])],
    ) -> Result<Vec<BulkFailure>, PlatformError> {
        if batch.iter().all(|(_, v)| v.is_empty()) {
            return Ok(Vec::new());
        }
        let what = format!("bulk write {service} of {gateway} ({} Things)", batch.len());
        let body = request::bulk_write_body(batch)
            .map_err(|e| PlatformError::Config(format!("{what}: encode body: {e}")))?;
        let table = self
            .send_for_table(
                "BulkWrite",
                Method::POST,
                &["Things", gateway, "Services", service],
                Some(Body::Bytes(body)),
                &what,
            )
            .await?;
        Ok(table
            .rows
            .iter()
            .filter_map(|row| {
                let thing = row.get("thing")?.as_str()?.to_string();
                Some(BulkFailure {
                    thing,
                    status: row
                        .get("status")
                        .and_then(Value::as_u64)
                        .and_then(|s| u16::try_from(s).ok())
                        .unwrap_or(500),
                    message: row
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                })
            })
            .collect())
    }

    /// Writes values stamped with the server time (`PUT …/Properties/*`).
    pub async fn set_properties(
        &self,
        thing: &str,
        values: &[(String, PropertyValue)],
    ) -> Result<(), PlatformError> {
        if values.is_empty() {
            return Ok(());
        }
        let body = request::set_properties_body(values);
        self.send(
            "SetProperties",
            Method::PUT,
            &["Things", thing, "Properties", "*"],
            Some(Body::Json(&body)),
            &format!("properties of {thing}"),
        )
        .await
        .map(|_| ())
    }

    /// Whether the Thing exists (`GET /Things/{t}`: 200 yes, 404 no).
    pub async fn thing_exists(&self, thing: &str) -> Result<bool, PlatformError> {
        match self
            .send(
                "GetThing",
                Method::GET,
                &["Things", thing],
                None,
                &format!("Thing {thing}"),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(PlatformError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The ThingTemplate a Thing implements (`GET /Things/{t}`, field `thingTemplate`); `None`
    /// when the answer does not name one.
    pub async fn thing_template(&self, thing: &str) -> Result<Option<String>, PlatformError> {
        let what = format!("Thing {thing}");
        let (status, bytes) = self
            .send("GetThing", Method::GET, &["Things", thing], None, &what)
            .await?;
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|_| PlatformError::InvalidResponse {
                status: status.as_u16(),
                what: what.clone(),
                snippet: snippet(&bytes),
            })?;
        Ok(v.get("thingTemplate")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_string))
    }

    /// Creates a Thing from a template with tags, then enables and restarts it.
    pub async fn create_thing(&self, thing: &NewThing) -> Result<(), PlatformError> {
        let body = request::create_thing_body(
            &thing.name,
            &thing.template,
            &thing.description,
            &thing.tags,
        );
        self.send(
            "CreateThing",
            Method::POST,
            &["Resources", "EntityServices", "Services", "CreateThing"],
            Some(Body::Json(&body)),
            &format!("CreateThing {}", thing.name),
        )
        .await?;
        for service in ["EnableThing", "RestartThing"] {
            self.call_thing_service(&thing.name, service, &Value::Object(Map::new()))
                .await?;
        }
        Ok(())
    }

    /// Creates the Thing unless it exists; returns whether it was created.
    pub async fn ensure_thing(&self, thing: &NewThing) -> Result<bool, PlatformError> {
        if self.thing_exists(&thing.name).await? {
            return Ok(false);
        }
        self.create_thing(thing).await?;
        Ok(true)
    }

    /// Runs a Thing service with named inputs; returns its InfoTable (empty for void services).
    pub async fn call_thing_service(
        &self,
        thing: &str,
        service: &str,
        inputs: &Value,
    ) -> Result<InfoTable, PlatformError> {
        self.send_for_table(
            "ThingService",
            Method::POST,
            &["Things", thing, "Services", service],
            Some(Body::Json(inputs)),
            &format!("service {service} of {thing}"),
        )
        .await
    }

    /// Runs a resource service (`/Resources/{resource}/Services/{service}`).
    pub async fn call_resource_service(
        &self,
        resource: &str,
        service: &str,
        inputs: &Value,
    ) -> Result<InfoTable, PlatformError> {
        self.send_for_table(
            "ResourceService",
            Method::POST,
            &["Resources", resource, "Services", service],
            Some(Body::Json(inputs)),
            &format!("service {service} of resource {resource}"),
        )
        .await
    }
}

/// A Thing a bulk write could not write, with the status its own `UpdatePropertyValues` got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkFailure {
    pub thing: String,
    pub status: u16,
    pub message: String,
}

async fn read_body(mut resp: reqwest::Response, what: &str) -> Result<Vec<u8>, PlatformError> {
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| PlatformError::from_transport(&e, what))?
    {
        if out.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(PlatformError::InvalidResponse {
                status: resp.status().as_u16(),
                what: what.to_string(),
                snippet: format!("body larger than {MAX_BODY_BYTES} bytes"),
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Parses a 2xx body as an InfoTable; an empty body is an empty table, anything that is not a
/// JSON object is an [`PlatformError::InvalidResponse`] with a snippet.
pub fn parse_table(
    status: StatusCode,
    body: &[u8],
    what: &str,
) -> Result<InfoTable, PlatformError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(InfoTable::default());
    }
    let invalid = || PlatformError::InvalidResponse {
        status: status.as_u16(),
        what: what.to_string(),
        snippet: snippet(body),
    };
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => serde_json::from_value(v).map_err(|_| invalid()),
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AppKey;

    #[test]
    fn bad_configs_are_rejected() {
        let key = AppKey::new("k");
        for url in ["not a url", "ftp://x/Thingworx", "mailto:a@b"] {
            let e = PlatformClient::new(PlatformConfig::new(url, key.clone())).err();
            assert_eq!(e.map(|e| e.class()), Some("config"), "{url}");
        }
        for header in ["Accept", "content-type", "appKey", "bad header"] {
            let mut cfg = PlatformConfig::new("http://127.0.0.1:1/Thingworx", key.clone());
            cfg.extra_headers.insert(header.into(), "x".into());
            assert!(PlatformClient::new(cfg).is_err(), "{header}");
        }
        let mut cfg = PlatformConfig::new("http://127.0.0.1:1/Thingworx", key.clone());
        cfg.tls.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(PlatformClient::new(cfg).is_err());
        let bad_key = AppKey::new("a\nb");
        assert!(
            PlatformClient::new(PlatformConfig::new("http://127.0.0.1:1/Thingworx", bad_key))
                .is_err()
        );
    }

    #[test]
    fn tls_options_build() {
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/test-ca.pem");
        let mut cfg = PlatformConfig::new("https://127.0.0.1:1/Thingworx", AppKey::new("k"));
        cfg.tls.ca_file = Some(ca.into());
        assert!(PlatformClient::new(cfg.clone()).is_ok());
        cfg.tls.accept_invalid_certs = true;
        assert!(PlatformClient::new(cfg).is_ok());

        // A file without any certificate is refused.
        let not_pem = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let mut cfg = PlatformConfig::new("https://127.0.0.1:1/Thingworx", AppKey::new("k"));
        cfg.tls.ca_file = Some(not_pem.into());
        let e = PlatformClient::new(cfg).err();
        assert_eq!(e.map(|e| e.class()), Some("config"));
    }

    #[test]
    fn urls_encode_segments() {
        let c = PlatformClient::new(PlatformConfig::new(
            "http://127.0.0.1:1/Thingworx/",
            AppKey::new("k"),
        ));
        let url = c.and_then(|c| c.url(&["Things", "pump 1/a", "Properties", "*"]));
        assert_eq!(
            url.map(|u| u.to_string()).ok(),
            Some("http://127.0.0.1:1/Thingworx/Things/pump%201%2Fa/Properties/*".to_string())
        );
    }

    #[test]
    fn table_parsing_never_panics_and_reports_snippets() {
        let ok = StatusCode::OK;
        assert!(parse_table(ok, b"", "x")
            .map(|t| t.rows.is_empty())
            .unwrap_or(false));
        assert!(parse_table(ok, b"  \n", "x").is_ok());
        let e = parse_table(ok, b"<html><body>login</body></html>", "x").err();
        assert_eq!(
            e.as_ref().map(PlatformError::class),
            Some("invalid_response")
        );
        assert!(e
            .map(|e| e.to_string().contains("<html><body>login"))
            .unwrap_or(false));
        for garbage in [
            &b"[1,2]"[..],
            b"42",
            b"\"s\"",
            b"{\"rows\": 5}",
            b"{\"dataShape\": 1}",
            &[0xff, 0x00, 0x7b],
        ] {
            assert!(parse_table(ok, garbage, "x").is_err(), "{garbage:?}");
        }
    }
}
