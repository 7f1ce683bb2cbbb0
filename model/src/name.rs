//! The one DNS-name grammar: how configured and published names are normalised and
//! checked, shared by validation, the engine and the DNS server.

/// Longest name in wire form, the terminating root label included (RFC 1035).
pub const MAX_NAME: usize = 255;

/// Normalises a configured or published name to lowercase, absolute, without the
/// trailing dot. A name that is not already inside `origin` is taken as relative to it;
/// `@` is the origin itself. An empty `origin` means "take the name as absolute".
pub fn normalize_name(name: &str, origin: &str) -> Result<String, String> {
    let name = name.trim();
    if name.is_empty() {
        return Err("empty name".into());
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
    to_wire(&out)?;
    Ok(out)
}

/// Encodes a normalised name (no trailing dot; empty string is the root) as wire labels.
pub fn to_wire(name: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(name.len() + 2);
    if !name.is_empty() {
        for label in name.split('.') {
            if label.is_empty() {
                return Err(format!("empty label in {name:?}"));
            }
            if label.len() > 63 {
                return Err(format!("label longer than 63 bytes in {name:?}"));
            }
            if let Some(c) = label
                .bytes()
                .find(|c| !c.is_ascii_graphic() || *c == b'\\' || *c == b'"')
            {
                return Err(format!("byte {c:#04x} not allowed in {name:?}"));
            }
            out.push(label.len() as u8);
            out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
    }
    out.push(0);
    if out.len() > MAX_NAME {
        return Err(format!("name longer than 255 bytes: {name:?}"));
    }
    Ok(out)
}
