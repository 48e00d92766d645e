//! A task's arguments from the command line, read by its JSON Schema:
//! `--args` values coerced to their parameter's type where that is
//! unambiguous, `--kwargs NAME=VALUE` placed by parameter name. Without a
//! schema (an unknown task, a plugin built before schemas) each value is
//! JSON if it parses, else a string, and the control plane judges.

use serde_json::{Map, Value};

/// Schemas visited through `$ref`, `anyOf` and `oneOf` to find one
/// parameter's types: a schema's own nesting is small, a hostile one (a
/// definition referring to itself) stops here.
const MAX_VISITS: usize = 64;

/// Why the command line's arguments do not fit the task.
#[derive(Debug, PartialEq, thiserror::Error)]
pub(crate) enum ArgumentError {
    /// A `--kwargs` value is not `NAME=VALUE`.
    #[error("--kwargs '{0}' is not NAME=VALUE (for example --kwargs text=hello)")]
    NotNamed(String),
    /// More positional values than parameters.
    #[error("task '{task}' takes {} argument(s) ({}); {given} were given", .names.len(), list(.names))]
    TooMany { task: String, names: Vec<String>, given: usize },
    /// A name the task has no parameter for.
    #[error("task '{task}' has no parameter '{name}'; its parameters are: {}", list(.names))]
    Unknown { task: String, name: String, names: Vec<String> },
    /// A parameter given twice (by position and by name, or by name twice).
    #[error("argument '{name}' of task '{task}' is given twice")]
    Twice { task: String, name: String },
    /// Parameters given neither by position nor by name.
    #[error("task '{task}' needs argument(s) {}: add them to --args in order, or as --kwargs NAME=VALUE", list(.missing))]
    Missing { task: String, missing: Vec<String> },
    /// A value that is none of the parameter's types.
    #[error("argument '{name}' of task '{task}' is {}; '{text}' is not", kinds_text(.kinds))]
    Unfit { task: String, name: String, text: String, kinds: Vec<&'static str> },
    /// A value that reads as two of the parameter's types.
    #[error("argument '{name}' of task '{task}' may be {}, and '{text}' reads as both: write it quoted, '\"{text}\"', for the string, or change the value", kinds_text(.kinds))]
    Ambiguous { task: String, name: String, text: String, kinds: Vec<&'static str> },
}

/// The names and types of a task's parameters, in positional order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Parameters {
    /// Parameter names in positional order.
    names: Vec<String>,
    /// The JSON types each parameter allows (empty: any).
    kinds: Vec<Vec<&'static str>>,
}

impl Parameters {
    /// The parameters of an arguments schema (the object form plugins
    /// export: `required` in positional order), or `None` when the schema
    /// is not of that form.
    pub(crate) fn from_schema(schema_text: &str) -> Option<Parameters> {
        let schema: Value = serde_json::from_str(schema_text).ok()?;
        let properties = schema.get("properties")?.as_object()?;
        let names: Vec<String> = schema
            .get("required")?
            .as_array()?
            .iter()
            .map(|n| n.as_str().map(str::to_string))
            .collect::<Option<_>>()?;
        let empty = Map::new();
        let definitions = schema.get("$defs").and_then(Value::as_object).unwrap_or(&empty);
        let kinds = names
            .iter()
            .map(|name| {
                let mut visits = MAX_VISITS;
                properties.get(name).map(|p| kinds_of(p, definitions, &mut visits)).unwrap_or_default()
            })
            .collect();
        Some(Parameters { names, kinds })
    }
}

/// The JSON arguments to send: an array when only `--args` are given, an
/// object by name when any `--kwargs` are.
pub(crate) fn arguments(
    task: &str,
    parameters: Option<&Parameters>,
    positional: &[String],
    named: &[String],
) -> Result<Value, ArgumentError> {
    let named: Vec<(&str, &str)> = named
        .iter()
        .map(|text| {
            text.split_once('=').map(|(n, v)| (n.trim(), v)).ok_or_else(|| ArgumentError::NotNamed(text.clone()))
        })
        .collect::<Result<_, _>>()?;
    let Some(parameters) = parameters else {
        // No schema: the old rule, and the control plane judges.
        if named.is_empty() {
            return Ok(Value::Array(positional.iter().map(|text| loose(text)).collect()));
        }
        let mut object = Map::new();
        for (name, text) in named {
            if object.insert(name.to_string(), loose(text)).is_some() {
                return Err(ArgumentError::Twice { task: task.into(), name: name.into() });
            }
        }
        return Ok(Value::Object(object));
    };
    let names = &parameters.names;
    if positional.len() > names.len() {
        return Err(ArgumentError::TooMany { task: task.into(), names: names.clone(), given: positional.len() });
    }
    let mut values: Vec<Option<Value>> = vec![None; names.len()];
    for (index, text) in positional.iter().enumerate() {
        values[index] = Some(coerce(task, &names[index], &parameters.kinds[index], text)?);
    }
    for (name, text) in &named {
        let Some(index) = names.iter().position(|n| n == name) else {
            return Err(ArgumentError::Unknown { task: task.into(), name: name.to_string(), names: names.clone() });
        };
        if values[index].is_some() {
            return Err(ArgumentError::Twice { task: task.into(), name: name.to_string() });
        }
        values[index] = Some(coerce(task, name, &parameters.kinds[index], text)?);
    }
    let missing: Vec<String> = names.iter().zip(&values).filter(|(_, v)| v.is_none()).map(|(n, _)| n.clone()).collect();
    if !missing.is_empty() {
        return Err(ArgumentError::Missing { task: task.into(), missing });
    }
    let values = values.into_iter().flatten();
    Ok(if named.is_empty() {
        Value::Array(values.collect())
    } else {
        Value::Object(names.iter().cloned().zip(values).collect())
    })
}

/// A value without a schema: JSON if it parses, else a string.
pub(crate) fn loose(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// `text` as a value of one of `kinds`: as JSON if that fits, as a string
/// if the parameter takes one; both (or neither) is refused.
fn coerce(task: &str, name: &str, kinds: &[&'static str], text: &str) -> Result<Value, ArgumentError> {
    if kinds.is_empty() {
        return Ok(loose(text));
    }
    let parsed = serde_json::from_str::<Value>(text).ok();
    let as_json = parsed.clone().filter(|value| kinds.iter().any(|kind| fits(value, kind)));
    let as_string = (kinds.contains(&"string") && !matches!(parsed, Some(Value::String(_))))
        .then(|| Value::String(text.to_string()));
    let error = |ambiguous: bool| {
        let (task, name, text, kinds) = (task.to_string(), name.to_string(), text.to_string(), kinds.to_vec());
        if ambiguous {
            ArgumentError::Ambiguous { task, name, text, kinds }
        } else {
            ArgumentError::Unfit { task, name, text, kinds }
        }
    };
    match (as_json, as_string) {
        (Some(value), None) | (None, Some(value)) => Ok(value),
        (Some(_), Some(_)) => Err(error(true)),
        (None, None) => Err(error(false)),
    }
}

/// Whether `value` is of the JSON Schema type `kind`.
fn fits(value: &Value, kind: &str) -> bool {
    match (value, kind) {
        (Value::Null, "null") | (Value::Bool(_), "boolean") | (Value::Number(_), "number") => true,
        (Value::Number(n), "integer") => n.is_i64() || n.is_u64(),
        (Value::String(_), "string") | (Value::Array(_), "array") | (Value::Object(_), "object") => true,
        _ => false,
    }
}

/// The JSON types a parameter's schema allows, following `$ref` into
/// `$defs` and `anyOf`/`oneOf`; empty when any value may fit.
fn kinds_of(schema: &Value, definitions: &Map<String, Value>, visits: &mut usize) -> Vec<&'static str> {
    const KINDS: [&str; 7] = ["null", "boolean", "integer", "number", "string", "array", "object"];
    let known = |name: &str| KINDS.iter().copied().find(|k| *k == name);
    let Some(left) = visits.checked_sub(1) else { return Vec::new() };
    *visits = left;
    match schema.get("type") {
        Some(Value::String(kind)) => return known(kind).into_iter().collect(),
        Some(Value::Array(kinds)) => return kinds.iter().filter_map(|k| k.as_str().and_then(known)).collect(),
        _ => {}
    }
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let target = reference.strip_prefix("#/$defs/").and_then(|name| definitions.get(name));
        return target.map(|t| kinds_of(t, definitions, visits)).unwrap_or_default();
    }
    if let Some(value) = schema.get("const") {
        return KINDS.iter().copied().filter(|kind| fits(value, kind)).take(1).collect();
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let mut kinds: Vec<&'static str> =
            values.iter().filter_map(|v| KINDS.iter().copied().find(|kind| fits(v, kind))).collect();
        kinds.dedup();
        return kinds;
    }
    let mut kinds = Vec::new();
    for key in ["anyOf", "oneOf"] {
        for branch in schema.get(key).and_then(Value::as_array).into_iter().flatten() {
            let branch_kinds = kinds_of(branch, definitions, visits);
            if branch_kinds.is_empty() {
                return Vec::new();
            }
            for kind in branch_kinds {
                if !kinds.contains(&kind) {
                    kinds.push(kind);
                }
            }
        }
    }
    kinds
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

fn kinds_text(kinds: &[&str]) -> String {
    let words: Vec<&str> = kinds
        .iter()
        .map(|kind| match *kind {
            "integer" => "an integer",
            "array" => "an array (JSON, [1,2])",
            "object" => "an object (JSON, {\"a\":1})",
            "null" => "null",
            "boolean" => "a boolean (true or false)",
            "number" => "a number",
            _ => "a string",
        })
        .collect();
    words.join(" or ")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema(properties: Value) -> Parameters {
        let names: Vec<&String> = properties.as_object().unwrap().keys().collect();
        let text = json!({"type": "object", "properties": properties, "required": names,
            "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "number"}}}}});
        Parameters::from_schema(&text.to_string()).unwrap()
    }

    fn texts(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn values_are_coerced_to_the_parameters_type() {
        let p = schema(json!({"port": {"type": "string"}, "times": {"type": "integer"}}));
        assert_eq!(arguments("t", Some(&p), &texts(&["8080", "3"]), &[]), Ok(json!(["8080", 3])));
        assert_eq!(arguments("t", Some(&p), &texts(&["\"quoted\"", "3"]), &[]), Ok(json!(["quoted", 3])));
        let error = arguments("t", Some(&p), &texts(&["a", "3.5"]), &[]).unwrap_err();
        assert_eq!(error.to_string(), "argument 'times' of task 't' is an integer; '3.5' is not");
        let error = arguments("t", Some(&p), &texts(&["a", "\"3\""]), &[]).unwrap_err();
        assert!(matches!(error, ArgumentError::Unfit { .. }), "a JSON string is not an integer: {error}");
    }

    #[test]
    fn a_value_of_two_possible_types_is_refused() {
        let p = schema(json!({"label": {"type": ["string", "null"]}}));
        assert_eq!(arguments("t", Some(&p), &texts(&["hello"]), &[]), Ok(json!(["hello"])));
        let error = arguments("t", Some(&p), &texts(&["null"]), &[]).unwrap_err();
        assert!(matches!(error, ArgumentError::Ambiguous { .. }), "{error}");
        assert!(error.to_string().contains("'\"null\"'"), "{error}");
        assert_eq!(arguments("t", Some(&p), &texts(&["\"null\""]), &[]), Ok(json!(["null"])));
    }

    #[test]
    fn references_and_unions_are_followed() {
        let p = schema(
            json!({"a": {"$ref": "#/$defs/Point"}, "b": {"anyOf": [{"$ref": "#/$defs/Point"}, {"type": "null"}]}}),
        );
        assert_eq!(arguments("t", Some(&p), &texts(&[r#"{"x":1}"#, "null"]), &[]), Ok(json!([{"x": 1}, null])));
        let error = arguments("t", Some(&p), &texts(&["5", "null"]), &[]).unwrap_err();
        assert!(error.to_string().contains("an object"), "{error}");
    }

    #[test]
    fn named_arguments_go_by_the_parameters_names() {
        let p = schema(json!({"text": {"type": "string"}, "times": {"type": "integer"}}));
        let by_name = arguments("repeat", Some(&p), &[], &texts(&["times=2", "text=5"]));
        assert_eq!(by_name, Ok(json!({"text": "5", "times": 2})));
        let mixed = arguments("repeat", Some(&p), &texts(&["ab"]), &texts(&["times=2"]));
        assert_eq!(mixed, Ok(json!({"text": "ab", "times": 2})));
        let twice = arguments("repeat", Some(&p), &texts(&["ab"]), &texts(&["text=x", "times=1"])).unwrap_err();
        assert_eq!(twice.to_string(), "argument 'text' of task 'repeat' is given twice");
        let unknown = arguments("repeat", Some(&p), &[], &texts(&["count=2"])).unwrap_err();
        assert_eq!(unknown.to_string(), "task 'repeat' has no parameter 'count'; its parameters are: text, times");
        let missing = arguments("repeat", Some(&p), &[], &texts(&["times=2"])).unwrap_err();
        assert!(matches!(missing, ArgumentError::Missing { ref missing, .. } if missing == &["text"]), "{missing}");
        let many = arguments("repeat", Some(&p), &texts(&["a", "1", "2"]), &[]).unwrap_err();
        assert_eq!(many.to_string(), "task 'repeat' takes 2 argument(s) (text, times); 3 were given");
        assert!(matches!(arguments("repeat", Some(&p), &[], &texts(&["times"])), Err(ArgumentError::NotNamed(_))));
    }

    #[test]
    fn without_a_schema_the_old_rule_holds() {
        assert_eq!(arguments("t", None, &texts(&["5", "word"]), &[]), Ok(json!([5, "word"])));
        assert_eq!(arguments("t", None, &[], &texts(&["x=5", "y=a=b"])), Ok(json!({"x": 5, "y": "a=b"})));
    }

    #[test]
    fn a_hostile_schema_ends() {
        // A definition that refers to itself, twice, is followed MAX_VISITS times only.
        let text = json!({"properties": {"a": {"$ref": "#/$defs/L"}}, "required": ["a"],
            "$defs": {"L": {"anyOf": [{"$ref": "#/$defs/L"}, {"$ref": "#/$defs/L"}]}}});
        let p = Parameters::from_schema(&text.to_string()).unwrap();
        assert_eq!(arguments("t", Some(&p), &texts(&["x"]), &[]), Ok(json!(["x"])));
    }
}
