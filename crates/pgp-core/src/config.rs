//! Helpers for diffusers / transformers `config.json` dicts, whose fields are often "an int
//! or one per block".

use serde::Deserialize;

use crate::error::{Error, Result};

/// A config value given once for all blocks or once per block.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock<T> {
    /// One value for every block.
    One(T),
    /// One value per block.
    Each(Vec<T>),
}

impl<T> PerBlock<T> {
    /// Every value given (one, or one per block).
    pub fn values(&self) -> &[T] {
        match self {
            PerBlock::One(v) => std::slice::from_ref(v),
            PerBlock::Each(list) => list,
        }
    }
}

impl<T: Clone> PerBlock<T> {
    /// The values for `n` blocks; a list must have exactly `n` entries.
    pub fn expand(&self, n: usize, field: &str) -> Result<Vec<T>> {
        match self {
            PerBlock::One(v) => Ok(vec![v.clone(); n]),
            PerBlock::Each(list) if list.len() == n => Ok(list.clone()),
            PerBlock::Each(list) => Err(Error::config(format!(
                "`{field}` has {} entries, expected one per block ({n})",
                list.len()
            ))),
        }
    }
}

/// Parses a config dict into `T`, naming the model in the error.
pub fn parse<T: for<'de> Deserialize<'de>>(value: &serde_json::Value, what: &str) -> Result<T> {
    serde_json::from_value(value.clone()).map_err(|e| Error::config(format!("{what} config: {e}")))
}

/// Refuses a count above `max`. Counts in a config are loop bounds (layers, blocks, timesteps):
/// a hostile file with a billion layers would build modules until memory runs out.
pub fn at_most(value: usize, max: usize, field: &str) -> Result<()> {
    if value > max {
        return Err(Error::config(format!(
            "`{field}` is {value}; more than {max} is not a real model"
        )));
    }
    Ok(())
}

/// Sets `fields` in a config dict, and takes them off its `_use_default_values` list: diffusers
/// drops every key named there before it builds the model, so a depth written but still listed
/// would be silently replaced by its default.
pub fn set_fields(
    config: &mut serde_json::Value,
    fields: Vec<(&str, serde_json::Value)>,
) -> Result<()> {
    let Some(obj) = config.as_object_mut() else {
        return Err(Error::config("the config is not a JSON object"));
    };
    if let Some(serde_json::Value::Array(defaults)) = obj.get_mut("_use_default_values") {
        defaults.retain(|d| !fields.iter().any(|(k, _)| d.as_str() == Some(*k)));
    }
    for (key, value) in fields {
        obj.insert(key.to_string(), value);
    }
    Ok(())
}
