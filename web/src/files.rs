//! A bundle folder the visitor picked or dropped (`<input webkitdirectory>`): its files by name.

use std::collections::HashMap;

use js_sys::Uint8Array;
use pgp_core::{Error, Result, ShardSource};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

pub struct FilesSource {
    name: String,
    files: HashMap<String, web_sys::File>,
}

impl FilesSource {
    /// From a `FileList` or an array of `File`s (the folder's files; sub-folders are ignored).
    pub fn new(list: &JsValue) -> std::result::Result<Self, JsValue> {
        let iter = js_sys::try_iter(list)?
            .ok_or_else(|| JsValue::from_str("expected a FileList or an array of Files"))?;
        let mut files = HashMap::new();
        let mut name = String::from("the chosen folder");
        for item in iter {
            let file: web_sys::File = item?
                .dyn_into()
                .map_err(|_| JsValue::from_str("expected File objects"))?;
            let relative = js_sys::Reflect::get(&file, &JsValue::from_str("webkitRelativePath"))
                .ok()
                .and_then(|v| v.as_string())
                .unwrap_or_default();
            if let Some((folder, _)) = relative.split_once('/') {
                name = folder.to_string();
            }
            files.insert(file.name(), file);
        }
        Ok(Self { name, files })
    }
}

impl ShardSource for FilesSource {
    async fn read(&self, name: &str) -> Result<Vec<u8>> {
        let err = |reason: String| Error::Source {
            file: format!("{}/{name}", self.name),
            reason,
        };
        let file = self
            .files
            .get(name)
            .ok_or_else(|| err("not in the chosen folder".into()))?;
        let buf = JsFuture::from(file.array_buffer())
            .await
            .map_err(|e| err(format!("cannot be read: {e:?}")))?;
        Ok(Uint8Array::new(&buf).to_vec())
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}
