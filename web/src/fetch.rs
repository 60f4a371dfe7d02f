//! A bundle over HTTP: `manifest.json` fetched fresh, shards through the Cache API (a second
//! visit loads them without the network), each checked against the size the manifest gives.

use std::cell::RefCell;
use std::collections::HashMap;

use js_sys::{Function, Reflect, Uint8Array};
use pgp_core::{Error, Result, ShardSource};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

/// The Cache API's cache for bundle shards.
const CACHE: &str = "pgp-wgpu-shards-v1";

pub struct FetchSource {
    /// The manifest's URL and the folder URL the shards are relative to.
    manifest_url: String,
    base: String,
    /// Shard sizes from the manifest, once it has been read.
    sizes: RefCell<HashMap<String, u64>>,
}

fn describe(e: JsValue) -> String {
    e.as_string()
        .or_else(|| {
            e.dyn_ref::<js_sys::Error>()
                .map(|e| String::from(e.message()))
        })
        .unwrap_or_else(|| format!("{e:?}"))
}

fn source_error(url: &str, reason: impl Into<String>) -> Error {
    Error::Source {
        file: url.to_string(),
        reason: reason.into(),
    }
}

async fn promise(v: JsValue, url: &str) -> Result<JsValue> {
    let p: js_sys::Promise = v
        .dyn_into()
        .map_err(|_| source_error(url, "expected a promise"))?;
    JsFuture::from(p)
        .await
        .map_err(|e| source_error(url, describe(e)))
}

async fn body(response: &web_sys::Response, url: &str) -> Result<Vec<u8>> {
    let buf = response
        .array_buffer()
        .map_err(|e| source_error(url, describe(e)))?;
    let buf = promise(buf.into(), url).await?;
    Ok(Uint8Array::new(&buf).to_vec())
}

/// The global `caches`, where there is one (secure contexts).
async fn open_cache() -> Option<web_sys::Cache> {
    let caches = Reflect::get(&js_sys::global(), &JsValue::from_str("caches")).ok()?;
    let caches: web_sys::CacheStorage = caches.dyn_into().ok()?;
    let cache = JsFuture::from(caches.open(CACHE)).await.ok()?;
    cache.dyn_into().ok()
}

async fn fetch(url: &str) -> Result<web_sys::Response> {
    let global = js_sys::global();
    let fetch: Function = Reflect::get(&global, &JsValue::from_str("fetch"))
        .ok()
        .and_then(|f| f.dyn_into().ok())
        .ok_or_else(|| source_error(url, "this context has no fetch"))?;
    let response = fetch
        .call1(&global, &JsValue::from_str(url))
        .map_err(|e| source_error(url, describe(e)))?;
    let response: web_sys::Response = promise(response, url)
        .await?
        .dyn_into()
        .map_err(|_| source_error(url, "fetch did not give a Response"))?;
    if !response.ok() {
        return Err(source_error(
            url,
            format!("HTTP {} {}", response.status(), response.status_text()),
        ));
    }
    Ok(response)
}

impl FetchSource {
    pub fn new(manifest_url: &str) -> Self {
        let base = match manifest_url.rfind('/') {
            Some(i) => manifest_url[..=i].to_string(),
            None => String::new(),
        };
        Self {
            manifest_url: manifest_url.to_string(),
            base,
            sizes: RefCell::new(HashMap::new()),
        }
    }

    /// A shard from the cache when it is there with the manifest's size, else from the network
    /// (and then into the cache).
    async fn shard(&self, name: &str) -> Result<Vec<u8>> {
        let url = format!("{}{name}", self.base);
        let expected = self.sizes.borrow().get(name).copied();
        let cache = open_cache().await;
        if let Some(cache) = &cache
            && let Ok(hit) = JsFuture::from(cache.match_with_str(&url)).await
            && let Ok(hit) = hit.dyn_into::<web_sys::Response>()
        {
            let bytes = body(&hit, &url).await?;
            if expected.is_none_or(|n| n == bytes.len() as u64) {
                return Ok(bytes);
            }
            // A stale copy (the bundle at this URL changed): drop it and fetch again.
            let _ = JsFuture::from(cache.delete_with_str(&url)).await;
        }
        let response = fetch(&url).await?;
        if let Some(cache) = &cache
            && let Ok(copy) = response.clone()
        {
            JsFuture::from(cache.put_with_str(&url, &copy))
                .await
                .map_err(|e| {
                    source_error(&url, format!("storing in the cache: {}", describe(e)))
                })?;
        }
        let bytes = body(&response, &url).await?;
        if let Some(n) = expected
            && n != bytes.len() as u64
        {
            return Err(source_error(
                &url,
                format!("{} bytes, the manifest says {n}", bytes.len()),
            ));
        }
        Ok(bytes)
    }
}

impl ShardSource for FetchSource {
    async fn read(&self, name: &str) -> Result<Vec<u8>> {
        if name != pgp_core::bundle::MANIFEST {
            return self.shard(name).await;
        }
        // The manifest always comes from the network, so a changed bundle is noticed.
        let response = fetch(&self.manifest_url).await?;
        let bytes = body(&response, &self.manifest_url).await?;
        if let Ok(m) = serde_json_sizes(&bytes) {
            *self.sizes.borrow_mut() = m;
        }
        Ok(bytes)
    }

    fn describe(&self) -> String {
        self.manifest_url
            .strip_suffix(pgp_core::bundle::MANIFEST)
            .map(|s| s.trim_end_matches('/'))
            .filter(|s| !s.is_empty())
            .unwrap_or(&self.manifest_url)
            .to_string()
    }
}

/// The shard sizes a manifest lists.
fn serde_json_sizes(bytes: &[u8]) -> Result<HashMap<String, u64>> {
    let text = std::str::from_utf8(bytes).map_err(|_| Error::Input("not UTF-8".into()))?;
    let m = pgp_core::bundle::Bundle::parse_manifest("manifest", text)?;
    Ok(m.shards.into_iter().map(|s| (s.file, s.bytes)).collect())
}
