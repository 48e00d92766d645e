//! Decoding a task's JSON arguments into its parameters.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

/// The raw arguments of one call, split per parameter without decoding them
/// yet, so that each parameter's error can name the parameter.
pub struct Args<'a> {
    task: &'static str,
    params: &'static [&'static str],
    values: Vec<&'a RawValue>,
}

impl<'a> Args<'a> {
    /// Splits `bytes`, a JSON array of positional arguments or a JSON object
    /// keyed by parameter name, into one raw value per parameter.
    pub fn parse(bytes: &'a [u8], task: &'static str, params: &'static [&'static str]) -> Result<Self, String> {
        let wanted = || describe(task, params);
        let text = std::str::from_utf8(bytes).map_err(|_| format!("arguments of {} are not UTF-8 JSON", wanted()))?;
        let trimmed = text.trim_start();
        let values = if trimmed.is_empty() {
            Vec::new()
        } else if trimmed.starts_with('{') {
            let mut named: HashMap<String, &'a RawValue> = serde_json::from_str(text)
                .map_err(|e| format!("arguments of {} are not a JSON object: {e}", wanted()))?;
            let mut values = Vec::with_capacity(params.len());
            for param in params {
                match named.remove(*param) {
                    Some(value) => values.push(value),
                    None => return Err(format!("{} is missing argument '{param}'", wanted())),
                }
            }
            if let Some(extra) = named.keys().next() {
                return Err(format!("{} has no parameter '{extra}'", wanted()));
            }
            values
        } else {
            serde_json::from_str::<Vec<&'a RawValue>>(text)
                .map_err(|e| format!("arguments of {} must be a JSON array or object: {e}", wanted()))?
        };
        if values.len() != params.len() {
            return Err(format!("{} takes {} argument(s), but {} were given", wanted(), params.len(), values.len()));
        }
        Ok(Args { task, params, values })
    }

    /// Every parameter at once, from a JSON array of positional arguments:
    /// one pass over the arguments, where [`Args::parse`] and then
    /// [`Args::take`] make two (a large argument is scanned once to split
    /// it, then again to decode it). `None` when they do not decode so
    /// (named arguments, a wrong count or type…): [`Args::parse`] then
    /// says exactly what is wrong.
    pub fn positional<T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
        serde_json::from_slice(bytes).ok()
    }

    /// Decodes the parameter at `index`.
    pub fn take<T: Deserialize<'a>>(&self, index: usize) -> Result<T, String> {
        serde_json::from_str(self.values[index].get()).map_err(|e| {
            format!("argument '{}' of task '{}' does not fit its type: {e}", self.params[index], self.task)
        })
    }
}

fn describe(task: &str, params: &[&str]) -> String {
    format!("task '{task}({})'", params.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARAMS: &[&str] = &["x", "label"];

    #[test]
    fn positional_and_named_arguments_decode_alike() {
        for json in [&br#"[3, "a"]"#[..], br#"{"label": "a", "x": 3}"#] {
            let args = Args::parse(json, "t", PARAMS).unwrap();
            assert_eq!(args.take::<i64>(0).unwrap(), 3);
            assert_eq!(args.take::<&str>(1).unwrap(), "a");
        }
    }

    #[test]
    fn errors_name_the_task_and_the_parameter() {
        let wrong_count = Args::parse(b"[1]", "t", PARAMS).err().unwrap();
        assert!(wrong_count.contains("task 't(x, label)' takes 2 argument(s), but 1 were given"), "{wrong_count}");
        let missing = Args::parse(br#"{"x": 1}"#, "t", PARAMS).err().unwrap();
        assert!(missing.contains("missing argument 'label'"), "{missing}");
        let extra = Args::parse(br#"{"x": 1, "label": "a", "z": 0}"#, "t", PARAMS).err().unwrap();
        assert!(extra.contains("no parameter 'z'"), "{extra}");
        let args = Args::parse(br#"["one", "a"]"#, "t", PARAMS).unwrap();
        let wrong_type = args.take::<i64>(0).err().unwrap();
        assert!(wrong_type.contains("argument 'x' of task 't'"), "{wrong_type}");
        assert!(Args::parse(b"5", "t", PARAMS).is_err());
        assert!(Args::parse(b"", "t", &[]).is_ok());
    }

    #[test]
    fn positional_arguments_decode_in_one_pass_or_not_at_all() {
        let decoded: Option<(i64, &str)> = Args::positional(br#" [3, "a"] "#);
        assert_eq!(decoded, Some((3, "a")));
        // Anything Args::parse and take would refuse, or decode by name, is left to them.
        for refused in
            [&br#"{"x": 3, "label": "a"}"#[..], b"[3]", br#"[3, "a", 4]"#, br#"["3", "a"]"#, b"[3, \"\xff\"]", b""]
        {
            assert_eq!(Args::positional::<(i64, &str)>(refused), None, "{}", String::from_utf8_lossy(refused));
        }
    }
}
