//! Column values: the storage types a column may have ([`ColumnType`], whose tag numbers are
//! part of the spool format), a typed value ([`Value`]), and the Rust types that hold a column
//! ([`ColumnValue`]).
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How a column is stored: its Postgres type, and its tag in the spool's segment header (the
/// tag numbers are part of the spool format and never change meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ColumnType {
    /// `text`, never NULL.
    Text = 1,
    /// `timestamptz`, never NULL; microseconds since the Unix epoch.
    Timestamp = 2,
    /// `double precision`
    Float8 = 3,
    /// `bigint`
    Int8 = 4,
    /// `integer`
    Int4 = 5,
    /// `text[]`
    TextArray = 6,
}

impl ColumnType {
    /// The Postgres type.
    pub const fn sql(self) -> &'static str {
        match self {
            ColumnType::Text => "text",
            ColumnType::Timestamp => "timestamptz",
            ColumnType::Float8 => "double precision",
            ColumnType::Int8 => "bigint",
            ColumnType::Int4 => "integer",
            ColumnType::TextArray => "text[]",
        }
    }

    /// The Postgres type, as tokio-postgres names it: what an unnamed statement declares for
    /// each parameter (no server round trip to learn them).
    pub fn pg_type(self) -> tokio_postgres::types::Type {
        use tokio_postgres::types::Type;
        match self {
            ColumnType::Text => Type::TEXT,
            ColumnType::Timestamp => Type::TIMESTAMPTZ,
            ColumnType::Float8 => Type::FLOAT8,
            ColumnType::Int8 => Type::INT8,
            ColumnType::Int4 => Type::INT4,
            ColumnType::TextArray => Type::TEXT_ARRAY,
        }
    }

    pub fn from_tag(tag: u8) -> Option<Self> {
        Some(match tag {
            1 => ColumnType::Text,
            2 => ColumnType::Timestamp,
            3 => ColumnType::Float8,
            4 => ColumnType::Int8,
            5 => ColumnType::Int4,
            6 => ColumnType::TextArray,
            _ => return None,
        })
    }
}

/// One column's value, typed; `Null` for SQL NULL.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Text(String),
    /// Microseconds since the Unix epoch (negative before it).
    Timestamp(i64),
    Float8(f64),
    Int8(i64),
    Int4(i32),
    TextArray(Vec<String>),
}

impl Value {
    /// The value as a column of type `to`, or None when it does not fit (a spooled value whose
    /// column changed type in a later release). Integers widen, and become floats.
    pub fn convert(self, to: ColumnType) -> Option<Value> {
        use Value as V;
        Some(match (self, to) {
            (V::Null, _) => V::Null,
            (v @ V::Text(_), ColumnType::Text)
            | (v @ V::Timestamp(_), ColumnType::Timestamp)
            | (v @ V::Float8(_), ColumnType::Float8)
            | (v @ V::Int8(_), ColumnType::Int8)
            | (v @ V::Int4(_), ColumnType::Int4)
            | (v @ V::TextArray(_), ColumnType::TextArray) => v,
            (V::Int4(i), ColumnType::Int8) => V::Int8(i.into()),
            (V::Int8(i), ColumnType::Int4) => V::Int4(i32::try_from(i).ok()?),
            (V::Int4(i), ColumnType::Float8) => V::Float8(i.into()),
            (V::Int8(i), ColumnType::Float8) => V::Float8(i as f64),
            _ => return None,
        })
    }
}

/// A Rust type that holds one column.
pub trait ColumnValue: Sized {
    const TYPE: ColumnType;
    fn to_value(&self) -> Value;
    /// None when the value is not of [`Self::TYPE`] (after [`Value::convert`] it always is).
    fn from_value(v: Value) -> Option<Self>;
    /// The value of a new, empty row (NULL where the column may be NULL).
    fn empty() -> Self;
    /// The value as a number for scoring; None for NULL and for non-numeric columns.
    fn as_f64(&self) -> Option<f64> {
        None
    }
}

impl ColumnValue for String {
    const TYPE: ColumnType = ColumnType::Text;
    fn empty() -> Self {
        String::new()
    }
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
}

impl ColumnValue for SystemTime {
    const TYPE: ColumnType = ColumnType::Timestamp;
    fn empty() -> Self {
        UNIX_EPOCH
    }
    fn to_value(&self) -> Value {
        Value::Timestamp(match self.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
        })
    }
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Timestamp(m) if m >= 0 => UNIX_EPOCH.checked_add(Duration::from_micros(m as u64)),
            Value::Timestamp(m) => UNIX_EPOCH.checked_sub(Duration::from_micros(m.unsigned_abs())),
            _ => None,
        }
    }
}

macro_rules! nullable_column_value {
    ($($t:ty => $variant:ident, as_f64: $as_f64:expr);* $(;)?) => {$(
        impl ColumnValue for Option<$t> {
            const TYPE: ColumnType = ColumnType::$variant;
            fn empty() -> Self {
                None
            }
            fn as_f64(&self) -> Option<f64> {
                self.as_ref().and_then($as_f64)
            }
            fn to_value(&self) -> Value {
                self.clone().map_or(Value::Null, Value::$variant)
            }
            fn from_value(v: Value) -> Option<Self> {
                match v {
                    Value::Null => Some(None),
                    Value::$variant(x) => Some(Some(x)),
                    _ => None,
                }
            }
        }
    )*};
}
nullable_column_value! {
    f64 => Float8, as_f64: |x: &f64| Some(*x);
    i64 => Int8, as_f64: |x: &i64| Some(*x as f64);
    i32 => Int4, as_f64: |x: &i32| Some(f64::from(*x));
    Vec<String> => TextArray, as_f64: |_: &Vec<String>| None;
    String => Text, as_f64: |_: &String| None;
}
