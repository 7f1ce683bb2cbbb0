//! DNS wire format: reading questions out of requests and writing the fixed parts of
//! responses.
//!
//! Requests take one of two roads. The common shape (one question, no compression, at
//! most a bare OPT record) is read here byte by byte without allocating. Anything else
//! goes through hickory-proto's full message decoder, which knows every corner of the
//! format (compression, unknown options, malformed records) and tells us what is wrong.

use std::{borrow::Cow, net::IpAddr};

use hickory_proto::{
    op::{Message, OpCode},
    rr::rdata::opt::{EdnsCode, EdnsOption},
};

pub const HEADER_LEN: usize = 12;
pub use lifeline_model::name::{InvalidName, MAX_NAME, encode, normalize};

pub const TYPE_A: u16 = 1;
pub const TYPE_NS: u16 = 2;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_TXT: u16 = 16;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_TKEY: u16 = 249;
pub const TYPE_TSIG: u16 = 250;
pub const TYPE_IXFR: u16 = 251;
pub const TYPE_AXFR: u16 = 252;
pub const TYPE_MAILB: u16 = 253;
pub const TYPE_MAILA: u16 = 254;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;
pub const RCODE_REFUSED: u8 = 5;
/// BADVERS is 16: low nibble 0 in the header, 1 in the OPT extended-rcode byte.
pub const RCODE_BADVERS: u16 = 16;

const OPTION_ECS: u16 = 8;

// === names ===

/// Why a snapshot owner name cannot be served in its zone.
#[derive(Debug, thiserror::Error)]
pub enum BadOwner {
    #[error(transparent)]
    Name(#[from] InvalidName),
    #[error("{0} is outside the zone")]
    OutsideZone(String),
}

/// Converts a snapshot owner name to lowercase wire form: absolute with a trailing dot,
/// `@` for the apex, the apex spelled out, or relative to `apex` (wire). The result must
/// lie within `apex`.
pub fn owner_to_wire(name: &str, apex: &[u8]) -> Result<Box<[u8]>, BadOwner> {
    let name = name.trim();
    if name.is_empty() {
        return Err(InvalidName::Empty.into());
    }
    if name == "@" {
        return Ok(apex.into());
    }
    let (text, absolute) = match name.strip_suffix('.') {
        Some(n) => (n, true),
        None => (name, false),
    };
    let mut out = encode(text)?;
    // Without a trailing dot, a name that already ends in the apex is taken as written.
    if !absolute && !is_within(&out, apex) {
        out.pop();
        out.extend_from_slice(apex);
        if out.len() > MAX_NAME {
            return Err(InvalidName::TooLong { name: name.into() }.into());
        }
    }
    if !is_within(&out, apex) {
        return Err(BadOwner::OutsideZone(name.into()));
    }
    Ok(out.into())
}

/// True when wire name `name` is `apex` or below it (both lowercase wire form).
pub fn is_within(name: &[u8], apex: &[u8]) -> bool {
    if apex.len() > name.len() || !name.ends_with(apex) {
        return false;
    }
    // The suffix must begin at a label boundary.
    let cut = name.len() - apex.len();
    let mut i = 0;
    while i < cut {
        i += 1 + name[i] as usize;
    }
    i == cut
}

/// The parent of a wire name (drops the first label); `None` for the root.
pub fn parent(name: &[u8]) -> Option<&[u8]> {
    match name.first() {
        Some(0) | None => None,
        Some(&l) => name.get(1 + l as usize..),
    }
}

// === requests ===

/// EDNS(0) data of a request that the answer depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdnsInfo {
    /// Requestor's UDP payload size.
    pub payload: u16,
    pub version: u8,
    pub dnssec_ok: bool,
    /// EDNS Client Subnet: address and source prefix length.
    pub ecs: Option<(IpAddr, u8)>,
}

/// One question, ready to answer.
#[derive(Clone, Debug)]
pub struct Question<'a> {
    pub id: u16,
    pub rd: bool,
    pub cd: bool,
    /// The question section to echo: name in the client's case, type, class.
    pub echo: Cow<'a, [u8]>,
    /// Lowercased wire name, `lower[..lower_len]`.
    pub lower: [u8; MAX_NAME],
    pub lower_len: usize,
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<EdnsInfo>,
}

impl Question<'_> {
    pub fn name(&self) -> &[u8] {
        &self.lower[..self.lower_len]
    }
}

/// What a request turned out to be.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// A query to answer.
    Query(Question<'a>),
    /// Not answerable: reply with just a header carrying this rcode.
    Error { id: u16, flags: u16, rcode: u8 },
    /// Not worth a reply (too short to hold a header, or itself a response).
    Drop,
}

/// Reads the common request shape without allocating; `None` means "use [`parse_full`]".
pub fn parse_fast(raw: &[u8]) -> Option<Question<'_>> {
    if raw.len() < HEADER_LEN + 5 {
        return None;
    }
    let flags = u16::from_be_bytes([raw[2], raw[3]]);
    // QR must be 0 and the opcode QUERY; anything else takes the careful road.
    if flags & 0xF800 != 0 {
        return None;
    }
    let counts = &raw[4..12];
    if counts[..6] != [0, 1, 0, 0, 0, 0] || counts[6] != 0 || counts[7] > 1 {
        return None;
    }
    let mut lower = [0u8; MAX_NAME];
    let mut pos = HEADER_LEN;
    let mut n = 0;
    loop {
        let len = *raw.get(pos)? as usize;
        if len == 0 {
            break;
        }
        // Compression in a question is legal but rare; leave it to the full decoder.
        if len > 63 || n + len + 2 > MAX_NAME {
            return None;
        }
        let label = raw.get(pos + 1..pos + 1 + len)?;
        lower[n] = len as u8;
        for (d, s) in lower[n + 1..n + 1 + len].iter_mut().zip(label) {
            *d = s.to_ascii_lowercase();
        }
        n += 1 + len;
        pos += 1 + len;
    }
    lower[n] = 0;
    n += 1;
    pos += 1;
    let fixed = raw.get(pos..pos + 4)?;
    let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
    let end_q = pos + 4;
    let edns = if counts[7] == 1 {
        // Only a bare OPT (root owner, no options) is read here.
        let opt = raw.get(end_q..)?;
        if opt.len() != 11 || opt[0] != 0 || opt[1..3] != [0, 41] || opt[9..11] != [0, 0] {
            return None;
        }
        Some(EdnsInfo {
            payload: u16::from_be_bytes([opt[3], opt[4]]),
            version: opt[6],
            dnssec_ok: opt[7] & 0x80 != 0,
            ecs: None,
        })
    } else {
        if raw.len() != end_q {
            return None;
        }
        None
    };
    Some(Question {
        id: u16::from_be_bytes([raw[0], raw[1]]),
        rd: flags & 0x0100 != 0,
        cd: flags & 0x0010 != 0,
        echo: Cow::Borrowed(&raw[HEADER_LEN..end_q]),
        lower,
        lower_len: n,
        qtype,
        qclass,
        edns,
    })
}

/// Reads any request with hickory-proto's decoder and classifies it.
pub fn parse_full(raw: &[u8]) -> Parsed<'static> {
    if raw.len() < HEADER_LEN {
        return Parsed::Drop;
    }
    let id = u16::from_be_bytes([raw[0], raw[1]]);
    let flags = u16::from_be_bytes([raw[2], raw[3]]);
    if flags & 0x8000 != 0 {
        // Never answer a response: that is how reflection loops start.
        return Parsed::Drop;
    }
    let opcode = (flags >> 11) & 0xF;
    if opcode != 0 {
        // RFC 1035 §4.1.1: NOTIMP for kinds of query we do not support, whatever follows.
        return Parsed::Error {
            id,
            flags,
            rcode: RCODE_NOTIMP,
        };
    }
    let message = match Message::from_vec(raw) {
        Ok(m) => m,
        Err(_) => {
            return Parsed::Error {
                id,
                flags,
                rcode: RCODE_FORMERR,
            };
        }
    };
    if message.metadata.op_code != OpCode::Query || message.queries.len() != 1 {
        return Parsed::Error {
            id,
            flags,
            rcode: RCODE_FORMERR,
        };
    }
    let query = &message.queries[0];
    let mut echo = Vec::with_capacity(MAX_NAME + 4);
    let mut lower = [0u8; MAX_NAME];
    let mut n = 0;
    for label in query.name().iter() {
        if label.is_empty() || label.len() > 63 || n + label.len() + 2 > MAX_NAME {
            return Parsed::Error {
                id,
                flags,
                rcode: RCODE_FORMERR,
            };
        }
        echo.push(label.len() as u8);
        echo.extend_from_slice(label);
        lower[n] = label.len() as u8;
        for (d, s) in lower[n + 1..n + 1 + label.len()].iter_mut().zip(label) {
            *d = s.to_ascii_lowercase();
        }
        n += 1 + label.len();
    }
    echo.push(0);
    lower[n] = 0;
    n += 1;
    let qtype = u16::from(query.query_type());
    let qclass = u16::from(query.query_class());
    echo.extend_from_slice(&qtype.to_be_bytes());
    echo.extend_from_slice(&qclass.to_be_bytes());
    let edns = message.edns.as_ref().map(|e| EdnsInfo {
        payload: e.max_payload(),
        version: e.version(),
        dnssec_ok: e.flags().dnssec_ok,
        ecs: match e.option(EdnsCode::Subnet) {
            Some(EdnsOption::Subnet(s)) => Some((s.addr(), s.source_prefix())),
            _ => None,
        },
    });
    Parsed::Query(Question {
        id,
        rd: flags & 0x0100 != 0,
        cd: flags & 0x0010 != 0,
        echo: Cow::Owned(echo),
        lower,
        lower_len: n,
        qtype,
        qclass,
        edns,
    })
}

// === responses ===

/// Writes a response header. `aa` is set only for answers from our own zones.
#[allow(clippy::too_many_arguments)]
pub fn put_header(
    out: &mut Vec<u8>,
    id: u16,
    request_flags: u16,
    aa: bool,
    tc: bool,
    rcode: u8,
    qd: u16,
    an: u16,
    ns: u16,
    ar: u16,
) {
    // QR=1, opcode echoed, RD and CD copied, RA/Z/AD clear: we never recurse.
    let mut flags = 0x8000 | (request_flags & 0x7800) | (request_flags & 0x0110);
    if aa {
        flags |= 0x0400;
    }
    if tc {
        flags |= 0x0200;
    }
    flags |= u16::from(rcode & 0x0F);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    for c in [qd, an, ns, ar] {
        out.extend_from_slice(&c.to_be_bytes());
    }
}

/// Writes our OPT record: our payload size, extended rcode, DO copied (RFC 3225 §3), and
/// the ECS option echoed with the scope the answer depends on (RFC 7871 §7.2).
pub fn put_opt(
    out: &mut Vec<u8>,
    our_payload: u16,
    ext_rcode: u8,
    dnssec_ok: bool,
    ecs: Option<(IpAddr, u8, u8)>,
) {
    out.push(0);
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&our_payload.to_be_bytes());
    out.push(ext_rcode);
    out.push(0);
    out.push(if dnssec_ok { 0x80 } else { 0 });
    out.push(0);
    match ecs {
        None => out.extend_from_slice(&[0, 0]),
        Some((addr, source, scope)) => {
            let (family, bytes): (u16, Vec<u8>) = match addr {
                IpAddr::V4(a) => (1, a.octets().to_vec()),
                IpAddr::V6(a) => (2, a.octets().to_vec()),
            };
            let n = usize::from(source).div_ceil(8).min(bytes.len());
            let mut addr_bytes = bytes[..n].to_vec();
            // Bits beyond the source prefix must be zero (RFC 7871 §6).
            if source % 8 != 0
                && let Some(last) = addr_bytes.last_mut()
            {
                *last &= 0xFFu8 << (8 - source % 8);
            }
            let opt_len = 4 + n as u16;
            out.extend_from_slice(&(opt_len + 4).to_be_bytes());
            out.extend_from_slice(&OPTION_ECS.to_be_bytes());
            out.extend_from_slice(&opt_len.to_be_bytes());
            out.extend_from_slice(&family.to_be_bytes());
            out.push(source);
            out.push(scope);
            out.extend_from_slice(&addr_bytes);
        }
    }
}

/// Appends one resource record whose owner is `owner` (wire bytes, possibly a pointer).
pub fn put_rr(out: &mut Vec<u8>, owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) {
    out.extend_from_slice(owner);
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(rdata);
}

/// A compression pointer to `offset`.
pub fn pointer(offset: usize) -> [u8; 2] {
    debug_assert!(offset < 0x4000);
    (0xC000 | offset as u16).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_relative_to_the_origin() {
        let o = "global.example.com";
        assert_eq!(normalize("WWW", o).unwrap(), "www.global.example.com");
        assert_eq!(
            normalize("www.Global.Example.com", o).unwrap(),
            "www.global.example.com"
        );
        assert_eq!(normalize("other.org.", o).unwrap(), "other.org");
        assert_eq!(normalize("@", o).unwrap(), o);
        // A name that merely ends with the origin's text is still relative.
        assert_eq!(
            normalize("xglobal.example.com", o).unwrap(),
            "xglobal.example.com.global.example.com"
        );
        assert!(normalize("a..b", o).is_err());
        assert!(normalize(&"a".repeat(64), o).is_err());
        assert!(normalize("", o).is_err());
    }

    #[test]
    fn within_checks_label_boundaries() {
        let apex = encode("example.com").unwrap();
        assert!(is_within(&encode("www.example.com").unwrap(), &apex));
        assert!(is_within(&apex, &apex));
        assert!(!is_within(&encode("wwwexample.com").unwrap(), &apex));
        assert!(!is_within(&encode("com").unwrap(), &apex));
    }

    #[test]
    fn the_fast_reader_leaves_unusual_requests_to_the_full_decoder() {
        let mut q = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(b"\x03WwW\x07example\x03com\x00\x00\x01\x00\x01");
        let parsed = parse_fast(&q).unwrap();
        assert_eq!(parsed.name(), encode("www.example.com").unwrap().as_slice());
        assert_eq!(&parsed.echo[1..4], b"WwW");
        // Trailing bytes, a compressed name, or QR set: not the fast road.
        let mut trailing = q.clone();
        trailing.push(0);
        assert!(parse_fast(&trailing).is_none());
        let mut ptr = q[..12].to_vec();
        ptr.extend_from_slice(b"\xC0\x0C\x00\x01\x00\x01");
        assert!(parse_fast(&ptr).is_none());
        let mut resp = q.clone();
        resp[2] |= 0x80;
        assert!(parse_fast(&resp).is_none());
        assert!(matches!(parse_full(&resp), Parsed::Drop));
    }
}
