//! Python values to JSON and back: the arguments and results of tasks.
//!
//! Only what JSON holds is accepted (None, bool, int of 64 bits, finite
//! float, str, list or tuple, dict with str keys), nested at most
//! [`MAX_DEPTH`] deep, so a self-containing list or a NaN is refused with
//! a reason instead of looping or turning silently into `null`.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use pyo3::IntoPyObjectExt;
use serde_json::{Map, Number, Value};

/// The deepest nesting of lists and dicts accepted (serde_json's own bound
/// on what it parses).
pub(crate) const MAX_DEPTH: usize = 128;

/// `value` as JSON, or why it is not JSON.
pub(crate) fn to_json(value: &Bound<'_, PyAny>) -> Result<Value, String> {
    convert(value, 0)
}

fn convert(value: &Bound<'_, PyAny>, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested more than {MAX_DEPTH} levels deep"));
    }
    if value.is_none() {
        return Ok(Value::Null);
    }
    // bool before int: a Python bool is an int.
    if value.is_instance_of::<PyBool>() {
        return Ok(Value::Bool(value.extract::<bool>().map_err(|e| e.to_string())?));
    }
    if value.is_instance_of::<PyInt>() {
        if let Ok(int) = value.extract::<i64>() {
            return Ok(Value::from(int));
        }
        if let Ok(int) = value.extract::<u64>() {
            return Ok(Value::from(int));
        }
        return Err(format!("the integer {value} does not fit in 64 bits"));
    }
    if value.is_instance_of::<PyFloat>() {
        let float = value.extract::<f64>().map_err(|e| e.to_string())?;
        return Number::from_f64(float).map(Value::Number).ok_or_else(|| format!("{float} is not a finite number"));
    }
    if let Ok(text) = value.cast::<PyString>() {
        return Ok(Value::String(text.to_cow().map_err(|e| e.to_string())?.into_owned()));
    }
    if let Ok(list) = value.cast::<PyList>() {
        return list.iter().map(|item| convert(&item, depth + 1)).collect::<Result<_, _>>().map(Value::Array);
    }
    if let Ok(tuple) = value.cast::<PyTuple>() {
        return tuple.iter().map(|item| convert(&item, depth + 1)).collect::<Result<_, _>>().map(Value::Array);
    }
    if let Ok(dict) = value.cast::<PyDict>() {
        let mut map = Map::new();
        for (key, item) in dict.iter() {
            let Ok(key) = key.cast::<PyString>() else {
                return Err(format!("a dict key must be a str, not {}", type_name(&key)));
            };
            map.insert(key.to_cow().map_err(|e| e.to_string())?.into_owned(), convert(&item, depth + 1)?);
        }
        return Ok(Value::Object(map));
    }
    Err(format!("a {} is not JSON (use None, bool, int, float, str, list, tuple or dict)", type_name(value)))
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value.get_type().name().map(|name| name.to_string()).unwrap_or_else(|_| "value".into())
}

/// A JSON value as a Python value (objects become dicts, arrays lists).
pub(crate) fn to_python<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    match value {
        Value::Null => Ok(py.None().into_bound(py)),
        Value::Bool(flag) => flag.into_bound_py_any(py),
        Value::Number(number) => match (number.as_i64(), number.as_u64()) {
            (Some(int), _) => int.into_bound_py_any(py),
            (None, Some(int)) => int.into_bound_py_any(py),
            _ => number.as_f64().unwrap_or(f64::NAN).into_bound_py_any(py),
        },
        Value::String(text) => text.into_bound_py_any(py),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_python(py, item)?)?;
            }
            Ok(list.into_any())
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (key, item) in map {
                dict.set_item(key, to_python(py, item)?)?;
            }
            Ok(dict.into_any())
        }
    }
}
