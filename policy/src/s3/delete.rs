//! The keys of a DeleteObjects body (`<Delete><Object><Key>k</Key></Object>...</Delete>`),
//! read as S3 reads them: the key's text with XML's predefined entities and character
//! references resolved, CDATA literal, nothing trimmed. Anything else (a document type, an
//! unknown element, text where none belongs, an object without a key) is refused.

use quick_xml::Reader;
use quick_xml::events::Event;

use super::{BadS3, MAX_DELETE_KEYS};

/// Where the reader is in the document.
#[derive(Clone, Copy, PartialEq, Eq)]
enum At {
    Start,
    Delete,
    Object,
    /// Inside `Key`, `VersionId` (object) or `Quiet` (delete): text is read.
    Value(Field),
    End,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Key,
    VersionId,
    Quiet,
}

/// The keys a DeleteObjects body names, in order.
pub fn delete_keys(body: &[u8]) -> Result<Vec<String>, BadS3> {
    let bad = |why: String| BadS3::DeleteBody(why);
    let text = std::str::from_utf8(body).map_err(|_| bad("it is not UTF-8".to_owned()))?;
    let mut reader = Reader::from_str(text);
    let mut at = At::Start;
    let mut keys = Vec::new();
    let mut key: Option<String> = None;
    let mut value = String::new();
    loop {
        let event = reader
            .read_event()
            .map_err(|err| bad(format!("malformed XML: {err}")))?;
        match event {
            Event::Decl(_) | Event::Comment(_) if matches!(at, At::Start | At::End) => {}
            Event::Comment(_) => {}
            Event::Start(start) => {
                let name = start.local_name().as_ref().to_owned();
                at = match (at, name.as_str()) {
                    (At::Start, "Delete") => At::Delete,
                    (At::Delete, "Object") => {
                        key = None;
                        At::Object
                    }
                    (At::Delete, "Quiet") => At::Value(Field::Quiet),
                    (At::Object, "Key") if key.is_none() => At::Value(Field::Key),
                    (At::Object, "VersionId") => At::Value(Field::VersionId),
                    _ => return Err(bad(format!("unexpected element `{name}`"))),
                };
                value.clear();
            }
            Event::Empty(empty) => {
                let name = empty.local_name().as_ref().to_owned();
                return Err(bad(format!("unexpected empty element `{name}`")));
            }
            Event::Text(text) if matches!(at, At::Value(_)) => {
                value.push_str(&text.xml10_content());
            }
            Event::CData(data) if matches!(at, At::Value(_)) => {
                value.push_str(&data);
            }
            Event::GeneralRef(reference) if matches!(at, At::Value(_)) => {
                let resolved = match reference.resolve_char_ref() {
                    Ok(Some(c)) => c,
                    Ok(None) => match &*reference {
                        "lt" => '<',
                        "gt" => '>',
                        "amp" => '&',
                        "apos" => '\'',
                        "quot" => '"',
                        other => return Err(bad(format!("unknown entity `&{other};`"))),
                    },
                    Err(err) => return Err(bad(format!("bad character reference: {err}"))),
                };
                value.push(resolved);
            }
            Event::Text(text) if text.xml10_content().trim().is_empty() => {}
            Event::End(_) => {
                at = match at {
                    At::Value(Field::Key) => {
                        key = Some(std::mem::take(&mut value));
                        At::Object
                    }
                    At::Value(Field::VersionId) => At::Object,
                    At::Value(Field::Quiet) => At::Delete,
                    At::Object => {
                        let key = key
                            .take()
                            .filter(|k| !k.is_empty())
                            .ok_or_else(|| bad("an `Object` has no `Key`".to_owned()))?;
                        if keys.len() == MAX_DELETE_KEYS {
                            return Err(bad(format!("more than {MAX_DELETE_KEYS} keys")));
                        }
                        keys.push(key);
                        At::Delete
                    }
                    At::Delete => At::End,
                    At::Start | At::End => return Err(bad("unbalanced end tag".to_owned())),
                };
            }
            Event::Eof if at == At::End => break,
            Event::Eof => return Err(bad("the document ends early".to_owned())),
            Event::DocType(_) => return Err(bad("a document type is refused".to_owned())),
            Event::PI(_) => return Err(bad("processing instructions are refused".to_owned())),
            _ => return Err(bad("text or markup where none belongs".to_owned())),
        }
    }
    if keys.is_empty() {
        return Err(bad("it names no object".to_owned()));
    }
    Ok(keys)
}
