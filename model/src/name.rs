//! The one DNS-name grammar: how configured and published names are normalised and
//! checked, shared by validation, the engine and the DNS server.

/// Longest name in wire form, the terminating root label included (RFC 1035).
pub const MAX_NAME: usize = 255;

/// Why a text is not a DNS name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidName {
    #[error("empty name")]
    Empty,
    /// Two dots in a row, or a dot at the start.
    #[error("empty label in {name:?}")]
    EmptyLabel { name: String },
    #[error("label longer than 63 bytes in {name:?}")]
    LongLabel { name: String },
    /// A byte that is not printable ASCII, or one that zone files quote (`\`, `"`).
    #[error("byte {byte:#04x} not allowed in {name:?}")]
    Byte { byte: u8, name: String },
    /// Longer than [`MAX_NAME`] bytes in wire form.
    #[error("name longer than 255 bytes: {name:?}")]
    TooLong { name: String },
}

/// Normalises a configured or published name to lowercase, absolute, without the
/// trailing dot. A name that is not already inside `origin` is taken as relative to it;
/// `@` is the origin itself. An empty `origin` means "take the name as absolute".
pub fn normalize(name: &str, origin: &str) -> Result<String, InvalidName> {
    let name = name.trim();
    if name.is_empty() {
        return Err(InvalidName::Empty);
    }
    let lower = name.to_ascii_lowercase();
    let out = if lower == "@" {
        origin.to_owned()
    } else if let Some(abs) = lower.strip_suffix('.') {
        abs.to_owned()
    } else if origin.is_empty()
        || lower == origin
        || (lower.len() > origin.len()
            && lower.ends_with(origin)
            && lower.as_bytes()[lower.len() - origin.len() - 1] == b'.')
    {
        lower
    } else {
        format!("{lower}.{origin}")
    };
    encode(&out)?;
    Ok(out)
}

/// Encodes a normalised name (no trailing dot; empty string is the root) as wire labels.
pub fn encode(name: &str) -> Result<Vec<u8>, InvalidName> {
    let mut out = Vec::with_capacity(name.len() + 2);
    if !name.is_empty() {
        for label in name.split('.') {
            if label.is_empty() {
                return Err(InvalidName::EmptyLabel { name: name.into() });
            }
            if label.len() > 63 {
                return Err(InvalidName::LongLabel { name: name.into() });
            }
            if let Some(byte) = label
                .bytes()
                .find(|c| !c.is_ascii_graphic() || *c == b'\\' || *c == b'"')
            {
                return Err(InvalidName::Byte {
                    byte,
                    name: name.into(),
                });
            }
            out.push(label.len() as u8);
            out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
    }
    out.push(0);
    if out.len() > MAX_NAME {
        return Err(InvalidName::TooLong { name: name.into() });
    }
    Ok(out)
}

/// A name as names are compared and keyed: lowercase, without the trailing dot. It
/// checks nothing ([`normalize`] does).
pub fn canonical(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// True when `name` equals `zone` or lies below it, on a label boundary (either may be
/// spelled in any case, with or without the trailing dot).
pub fn in_zone(name: &str, zone: &str) -> bool {
    let (name, zone) = (canonical(name), canonical(zone));
    name == zone
        || name
            .strip_suffix(&zone)
            .is_some_and(|rest| rest.ends_with('.'))
}
