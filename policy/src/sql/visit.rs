//! A walk over every node of a parse tree: the tree is fed through its `serde::Serialize`
//! implementation into a serializer that builds nothing and tells a [`Visitor`] what it sees
//! (generated code, so no node type or field can be forgotten).

use std::fmt;

use serde::ser::{self, Serialize};

/// What a walk reports, in the tree's order: a struct opens (by its Rust type name, e.g.
/// `ColumnRef`), each of its fields is announced before its value, and it closes; leaf values
/// come in between.
pub(super) trait Visitor {
    fn open(&mut self, name: &'static str);
    fn field(&mut self, key: &'static str);
    fn close(&mut self);
    fn string(&mut self, _value: &str) {}
    fn boolean(&mut self, _value: bool) {}
    fn integer(&mut self, _value: i64) {}
    /// An optional value is present (before it is walked).
    fn some(&mut self) {}
}

/// Walks `node`, telling `visitor`. The walk itself never fails; an error would be a bug here.
pub(super) fn visit(node: &impl Serialize, visitor: &mut impl Visitor) -> Result {
    node.serialize(&mut Tree(visitor))
}

struct Tree<'v, V>(&'v mut V);

#[derive(Debug)]
pub(super) struct VisitError(String);

impl fmt::Display for VisitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for VisitError {}

impl ser::Error for VisitError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

type Result<T = ()> = std::result::Result<T, VisitError>;

/// Leaf values a visitor is told about, as the visitor's method for them.
macro_rules! leaves {
    ($($method:ident($ty:ty) => $call:ident),*) => {$(
        fn $method(self, v: $ty) -> Result {
            self.0.$call(v.into());
            Ok(())
        }
    )*};
}

/// Leaf values no visitor needs.
macro_rules! ignored {
    ($($method:ident($ty:ty)),*) => {$(
        fn $method(self, _: $ty) -> Result {
            Ok(())
        }
    )*};
}

impl<'v, V: Visitor> ser::Serializer for &mut Tree<'v, V> {
    type Ok = ();
    type Error = VisitError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    leaves!(
        serialize_bool(bool) => boolean,
        serialize_i8(i8) => integer,
        serialize_i16(i16) => integer,
        serialize_i32(i32) => integer,
        serialize_i64(i64) => integer,
        serialize_u8(u8) => integer,
        serialize_u16(u16) => integer,
        serialize_u32(u32) => integer
    );
    ignored!(
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_bytes(&[u8]),
        serialize_unit_struct(&'static str)
    );
    fn serialize_str(self, v: &str) -> Result {
        self.0.string(v);
        Ok(())
    }
    fn serialize_none(self) -> Result {
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result {
        self.0.some();
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result {
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(self, _: &'static str, v: &T) -> Result {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> Result {
        value.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self> {
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self> {
        Ok(self)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self> {
        Ok(self)
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Self> {
        self.0.open(name);
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self> {
        self.0.open(name);
        Ok(self)
    }
}

/// Sequences, tuples and maps: every element is walked the same way.
macro_rules! elements {
    ($($trait:ident :: $method:ident),*) => {$(
        impl<'v, V: Visitor> ser::$trait for &mut Tree<'v, V> {
            type Ok = ();
            type Error = VisitError;
            fn $method<T: ?Sized + Serialize>(&mut self, value: &T) -> Result {
                value.serialize(&mut **self)
            }
            fn end(self) -> Result {
                Ok(())
            }
        }
    )*};
}

elements!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl<'v, V: Visitor> ser::SerializeMap for &mut Tree<'v, V> {
    type Ok = ();
    type Error = VisitError;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result {
        key.serialize(&mut **self)
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result {
        Ok(())
    }
}

/// Structs (and struct variants): each field is announced before its value is walked, and the
/// struct closes at the end.
macro_rules! fields {
    ($($trait:ident),*) => {$(
        impl<'v, V: Visitor> ser::$trait for &mut Tree<'v, V> {
            type Ok = ();
            type Error = VisitError;
            fn serialize_field<T: ?Sized + Serialize>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result {
                self.0.field(key);
                value.serialize(&mut **self)
            }
            fn end(self) -> Result {
                self.0.close();
                Ok(())
            }
        }
    )*};
}

fields!(SerializeStruct, SerializeStructVariant);
