//! The whole-tree walk: the parse tree is fed through its `serde::Serialize` implementation
//! into a serializer that builds nothing, so every node of every field is visited (generated
//! code, no node type can be forgotten), and the walk only keeps what classification needs:
//! relations, function calls, CTE names and a few statement flags.

use std::fmt;

use serde::ser::{self, Serialize};

use super::{Access, SIDE_EFFECT_FUNCTIONS, SqlKind, qualify, statement_kind_of};

/// Accesses of one top-level statement, and its own kind.
pub(super) fn walk(node: &impl Serialize) -> (SqlKind, Vec<Access>) {
    let mut walker = Walker::default();
    // The walker never fails; an error here would be a bug in this file, and denies.
    if node.serialize(&mut walker).is_err() {
        return (SqlKind::Unknown, vec![unknown()]);
    }
    let kind = walker.top_kind.unwrap_or(SqlKind::Unknown);
    let mut accesses = walker.accesses;
    // Unqualified references to a common table expression are not relations.
    for (schema, name) in walker.reads {
        if schema.is_empty() && walker.ctes.contains(&name) {
            continue;
        }
        accesses.push(Access {
            kind: SqlKind::Select,
            object: Some(qualify(&schema, &name)),
        });
    }
    (kind, accesses)
}

fn unknown() -> Access {
    Access {
        kind: SqlKind::Unknown,
        object: None,
    }
}

/// An open struct on the way down, with what it has shown so far.
#[derive(Default)]
struct Frame {
    name: &'static str,
    field: &'static str,
    /// RangeVar: schemaname and relname.
    schema: String,
    relname: String,
    /// FuncCall funcname or List parts.
    parts: Vec<String>,
    /// Statement flags.
    into: bool,
    is_program: bool,
    filename: String,
    setting: String,
    /// Relations named in the statement's target fields, kind decided at its end.
    targets: Vec<String>,
}

#[derive(Default)]
struct Walker {
    frames: Vec<Frame>,
    accesses: Vec<Access>,
    /// Relations read, as (schema, name), CTE references filtered at the end.
    reads: Vec<(String, String)>,
    ctes: Vec<String>,
    top_kind: Option<SqlKind>,
}

fn is_statement(name: &str) -> bool {
    name.ends_with("Stmt") && name != "RawStmt"
}

/// Fields of a statement that name what it writes or defines.
fn is_target(statement: &str, field: &str) -> bool {
    match (statement, field) {
        ("InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" | "CopyStmt", "relation") => true,
        ("SelectStmt", "into_clause") => true,
        (_, "relation" | "relations" | "objects" | "view" | "into") => {
            statement_kind_of(statement, false, false, "") == SqlKind::Ddl
        }
        _ => false,
    }
}

impl Walker {
    /// The innermost statement frame, if the path from it down to the top frame passes only
    /// through `field` of that statement (i.e. whether we are inside that field).
    fn statement_target(&self) -> Option<usize> {
        let i = self.frames.iter().rposition(|f| is_statement(f.name))?;
        is_target(self.frames[i].name, self.frames[i].field).then_some(i)
    }

    /// The innermost frame that is not a wrapper (`Node`, `String`).
    fn owner(&mut self) -> Option<&mut Frame> {
        self.frames
            .iter_mut()
            .rev()
            .find(|f| !matches!(f.name, "Node" | "String"))
    }

    fn close(&mut self, frame: Frame) {
        match frame.name {
            "RangeVar" => match self.statement_target() {
                Some(i) => self.frames[i]
                    .targets
                    .push(qualify(&frame.schema, &frame.relname)),
                None => self.reads.push((frame.schema, frame.relname)),
            },
            "List" if !frame.parts.is_empty() => {
                // DROP's objects are lists of name parts.
                if let Some(i) = self.statement_target() {
                    let (schema, name) = match frame.parts.as_slice() {
                        [name] => ("", name.as_str()),
                        [.., schema, name] => (schema.as_str(), name.as_str()),
                        [] => ("", ""),
                    };
                    let object = qualify(schema, name);
                    self.frames[i].targets.push(object);
                }
            }
            "FuncCall" => {
                let name = frame.parts.join(".");
                let in_call = self
                    .owner()
                    .is_some_and(|f| f.name == "CallStmt" && f.field == "funccall");
                if in_call {
                    self.accesses.push(Access {
                        kind: SqlKind::Call,
                        object: Some(name),
                    });
                } else {
                    let bare = name.rsplit('.').next().unwrap_or(&name).to_lowercase();
                    if SIDE_EFFECT_FUNCTIONS.contains(&bare.as_str()) {
                        self.accesses.push(Access {
                            kind: SqlKind::Function,
                            object: Some(bare),
                        });
                    }
                }
            }
            name if is_statement(name) => {
                let kind = statement_kind_of(name, frame.into, frame.is_program, &frame.filename);
                for target in frame.targets {
                    self.accesses.push(Access {
                        kind,
                        object: Some(target),
                    });
                }
                if matches!(name, "VariableSetStmt" | "VariableShowStmt")
                    && !frame.setting.is_empty()
                {
                    self.accesses.push(Access {
                        kind,
                        object: Some(frame.setting),
                    });
                }
                let nested = self.frames.iter().any(|f| is_statement(f.name));
                if nested {
                    if kind != SqlKind::Select {
                        self.accesses.push(Access { kind, object: None });
                    }
                } else {
                    self.top_kind = Some(kind);
                }
            }
            _ => {}
        }
    }

    fn string(&mut self, value: &str) {
        let Some(top) = self.frames.last_mut() else {
            return;
        };
        match (top.name, top.field) {
            ("RangeVar", "schemaname") => top.schema = value.to_owned(),
            ("RangeVar", "relname") => top.relname = value.to_owned(),
            ("CommonTableExpr", "ctename") => self.ctes.push(value.to_owned()),
            ("CopyStmt", "filename") => top.filename = value.to_owned(),
            ("VariableSetStmt" | "VariableShowStmt", "name") => top.setting = value.to_owned(),
            ("String", "sval") => {
                if let Some(owner) = self.owner()
                    && ((owner.name == "FuncCall" && owner.field == "funcname")
                        || (owner.name == "List" && owner.field == "items"))
                {
                    owner.parts.push(value.to_owned());
                }
            }
            _ => {}
        }
    }
}

#[derive(Debug)]
pub(super) struct WalkError(String);

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WalkError {}

impl ser::Error for WalkError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

type Result<T = ()> = std::result::Result<T, WalkError>;

impl ser::Serializer for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_bool(self, v: bool) -> Result {
        if let Some(top) = self.frames.last_mut()
            && top.name == "CopyStmt"
            && top.field == "is_program"
        {
            top.is_program = v;
        }
        Ok(())
    }
    fn serialize_i8(self, _: i8) -> Result {
        Ok(())
    }
    fn serialize_i16(self, _: i16) -> Result {
        Ok(())
    }
    fn serialize_i32(self, _: i32) -> Result {
        Ok(())
    }
    fn serialize_i64(self, _: i64) -> Result {
        Ok(())
    }
    fn serialize_u8(self, _: u8) -> Result {
        Ok(())
    }
    fn serialize_u16(self, _: u16) -> Result {
        Ok(())
    }
    fn serialize_u32(self, _: u32) -> Result {
        Ok(())
    }
    fn serialize_u64(self, _: u64) -> Result {
        Ok(())
    }
    fn serialize_f32(self, _: f32) -> Result {
        Ok(())
    }
    fn serialize_f64(self, _: f64) -> Result {
        Ok(())
    }
    fn serialize_char(self, _: char) -> Result {
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result {
        self.string(v);
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result {
        Ok(())
    }
    fn serialize_none(self) -> Result {
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result {
        if let Some(top) = self.frames.last_mut()
            && top.name == "SelectStmt"
            && top.field == "into_clause"
        {
            top.into = true;
        }
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result {
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
        self.frames.push(Frame {
            name,
            ..Frame::default()
        });
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self> {
        self.frames.push(Frame {
            name,
            ..Frame::default()
        });
        Ok(self)
    }
}

/// Sequences, tuples and maps: every element is walked the same way.
macro_rules! walk_elements {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for &mut Walker {
            type Ok = ();
            type Error = WalkError;
            fn $method<T: ?Sized + Serialize>(&mut self, value: &T) -> Result {
                value.serialize(&mut **self)
            }
            fn end(self) -> Result {
                Ok(())
            }
        }
    )*};
}

walk_elements!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl ser::SerializeMap for &mut Walker {
    type Ok = ();
    type Error = WalkError;
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

/// Structs (and struct variants): the field name is recorded on the frame before its value
/// is walked, and the frame is closed at the end.
macro_rules! walk_fields {
    ($($trait:ident),*) => {$(
        impl ser::$trait for &mut Walker {
            type Ok = ();
            type Error = WalkError;
            fn serialize_field<T: ?Sized + Serialize>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result {
                if let Some(top) = self.frames.last_mut() {
                    top.field = key;
                }
                value.serialize(&mut **self)
            }
            fn end(self) -> Result {
                if let Some(frame) = self.frames.pop() {
                    self.close(frame);
                }
                Ok(())
            }
        }
    )*};
}

walk_fields!(SerializeStruct, SerializeStructVariant);
