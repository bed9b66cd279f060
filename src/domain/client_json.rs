//! Client JSON text → a canonical `serde_json::Value` that every store gives back unchanged.
//!
//! PostgreSQL keeps JSON numbers as `numeric` and SQLite keeps the text, so the same value
//! can come back in another form from each (`1e15` reads back from PostgreSQL as the integer
//! `1000000000000000`, from SQLite as the float `1e15`; `-0.0` as `0`). Numbers are therefore
//! made canonical at the door, once, so that what a client stored is exactly what every
//! backend reads back:
//!
//! - an integer token must fit 64 bits (`-2^63 ..= 2^64-1`); a larger one is refused, because
//!   no double holds it exactly (send it as a string);
//! - any other number is the IEEE-754 double it denotes (as in JavaScript), and a double that
//!   is a whole number within 64 bits becomes that integer (`1.0` → `1`, `1e3` → `1000`,
//!   `-0.0` → `0`).
//!
//! Parsing is exact (serde_json's `float_roundtrip`), so a double written and read back by
//! either store is the same double, including the extremes (`1.7976931348623157e308`,
//! `5e-324`).

use serde_json::{Number, Value};

/// Why a client's JSON text was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientJsonError {
    /// Nothing but whitespace.
    #[error("empty body")]
    Empty,
    /// Not JSON (or a number beyond a double's range).
    #[error("invalid JSON at line {line}, column {column}")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// An integer outside `-2^63 ..= 2^64-1`.
    #[error("an integer does not fit 64 bits")]
    IntegerOutOfRange,
}

/// Parses client JSON text and makes its numbers canonical (see the module doc).
pub fn parse(text: &[u8]) -> Result<Value, ClientJsonError> {
    if text.iter().all(u8::is_ascii_whitespace) {
        return Err(ClientJsonError::Empty);
    }
    let mut value: Value = serde_json::from_slice(text).map_err(|err| ClientJsonError::Syntax {
        line: err.line(),
        column: err.column(),
    })?;
    if !integers_fit(text) {
        return Err(ClientJsonError::IntegerOutOfRange);
    }
    canonicalize(&mut value);
    Ok(value)
}

/// Makes every number of `value` canonical: a whole double within 64 bits becomes an integer.
pub fn canonicalize(value: &mut Value) {
    match value {
        Value::Number(number) => {
            if let Some(integer) = whole_number(number) {
                *number = integer;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(canonicalize),
        Value::Object(map) => map.values_mut().for_each(canonicalize),
        _ => {}
    }
}

/// Whether every number of `value` is canonical (what [`canonicalize`] leaves).
pub fn is_canonical(value: &Value) -> bool {
    match value {
        Value::Number(number) => whole_number(number).is_none(),
        Value::Array(items) => items.iter().all(is_canonical),
        Value::Object(map) => map.values().all(is_canonical),
        _ => true,
    }
}

/// The integer a float stands for, if it is a whole number within 64 bits.
fn whole_number(number: &Number) -> Option<Number> {
    if number.is_i64() || number.is_u64() {
        return None;
    }
    let float = number.as_f64()?;
    if !float.is_finite() || float.fract() != 0.0 {
        return None;
    }
    // 2^64 and -2^63 are exact doubles; every whole double strictly inside is an exact integer.
    if (0.0..18_446_744_073_709_551_616.0).contains(&float) {
        Some(Number::from(float as u64))
    } else if (-9_223_372_036_854_775_808.0..0.0).contains(&float) {
        Some(Number::from(float as i64))
    } else {
        None
    }
}

/// Whether every integer token of the (valid) JSON `text` fits `-2^63 ..= 2^64-1`. serde_json
/// turns a larger integer into the nearest double without saying so; the text is the only
/// place left to see it.
fn integers_fit(text: &[u8]) -> bool {
    let mut index = 0;
    while index < text.len() {
        match text[index] {
            b'"' => {
                index += 1;
                while index < text.len() {
                    match text[index] {
                        b'\\' => index += 2,
                        b'"' => break,
                        _ => index += 1,
                    }
                }
                index += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = index;
                while index < text.len()
                    && matches!(text[index], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    index += 1;
                }
                if !integer_token_fits(&text[start..index]) {
                    return false;
                }
            }
            _ => index += 1,
        }
    }
    true
}

/// Whether a number token is not an integer, or an integer within 64 bits.
fn integer_token_fits(token: &[u8]) -> bool {
    if token.iter().any(|byte| matches!(byte, b'.' | b'e' | b'E')) {
        return true;
    }
    let (negative, digits) = match token.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, token),
    };
    // JSON allows no leading zeros, so more than 20 digits is more than 2^64.
    if digits.len() > 20 {
        return false;
    }
    let Ok(magnitude) = std::str::from_utf8(digits).unwrap_or("x").parse::<u128>() else {
        return false;
    };
    if negative {
        magnitude <= 1u128 << 63
    } else {
        magnitude <= u128::from(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(text: &str) -> Result<Value, ClientJsonError> {
        parse(text.as_bytes())
    }

    #[test]
    fn the_extremes_of_a_double_parse_exactly() {
        for text in [
            "1.7976931348623157e308",
            "-1.7976931348623157e308",
            "5e-324",
            "2.2250738585072014e-308",
            "0.1",
            "1.5e300",
        ] {
            let value = parsed(text).unwrap();
            assert_eq!(value.as_f64(), Some(text.parse::<f64>().unwrap()), "{text}");
        }
        // PostgreSQL gives f64::MAX back as its 309 decimal digits: still exactly f64::MAX.
        let digits = format!("17976931348623157{}", "0".repeat(292));
        let big: Value = serde_json::from_str(&digits).unwrap();
        assert_eq!(big.as_f64(), Some(f64::MAX));
        assert_eq!(
            parsed("1e400"),
            Err(ClientJsonError::Syntax { line: 1, column: 5 })
        );
    }

    #[test]
    fn integers_must_fit_64_bits() {
        assert_eq!(parsed("18446744073709551615").unwrap(), json!(u64::MAX));
        assert_eq!(parsed("-9223372036854775808").unwrap(), json!(i64::MIN));
        assert_eq!(
            parsed("18446744073709551616"),
            Err(ClientJsonError::IntegerOutOfRange)
        );
        assert_eq!(
            parsed("-9223372036854775809"),
            Err(ClientJsonError::IntegerOutOfRange)
        );
        assert_eq!(
            parsed(r#"{"a": [1, {"b": 123456789012345678901234567890}]}"#),
            Err(ClientJsonError::IntegerOutOfRange)
        );
        // Digits inside strings are text, not numbers.
        assert!(parsed(r#"{"a": "123456789012345678901234567890", "b\"9": "9"}"#).is_ok());
        // The same magnitude written as a double is a double.
        assert_eq!(
            parsed("1.8446744073709552e19").unwrap().as_f64(),
            Some(2f64.powi(64))
        );
    }

    #[test]
    fn whole_doubles_become_integers() {
        assert_eq!(
            parsed(r#"{"a": 1.0, "b": 1e15, "c": -0.0, "d": -2.5, "e": 1e300, "f": [3e0]}"#)
                .unwrap(),
            json!({"a": 1, "b": 1_000_000_000_000_000u64, "c": 0, "d": -2.5, "e": 1e300, "f": [3]})
        );
        assert_eq!(parsed("-9.223372036854775808e18").unwrap(), json!(i64::MIN));
        let value = parsed(r#"{"x": [1.5, 2, "3.0"]}"#).unwrap();
        assert!(is_canonical(&value));
        assert!(!is_canonical(&json!({"x": 2.0})));
    }

    #[test]
    fn empty_and_broken_text_is_refused() {
        assert_eq!(parsed("  \n"), Err(ClientJsonError::Empty));
        assert!(matches!(parsed("{"), Err(ClientJsonError::Syntax { .. })));
        assert!(matches!(
            parsed(r#""\ud800""#),
            Err(ClientJsonError::Syntax { .. })
        ));
    }
}
