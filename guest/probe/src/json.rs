//! A tiny JSON writer over `core::fmt::Write`: no allocation, output goes straight to the sink.
//!
//! ```text
//! let mut o = Object::new(&mut sink);
//! o.str("probe", "pulse-probe").u64("cpus", 2).u32_list("apic_ids", &[0, 1]);
//! o.end();
//! ```

use core::fmt::{self, Write};

/// Writes `s` as a JSON string literal, quotes included.
pub fn write_str<W: Write + ?Sized>(w: &mut W, s: &str) -> fmt::Result {
    w.write_char('"')?;
    write_escaped(w, s)?;
    w.write_char('"')
}

/// Writes `s` escaped for the inside of a JSON string literal (no quotes).
pub fn write_escaped<W: Write + ?Sized>(w: &mut W, s: &str) -> fmt::Result {
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let esc: Option<&str> = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            _ => None,
        };
        let control = (c as u32) < 0x20 || c == '\u{7f}';
        if esc.is_some() || control {
            w.write_str(&s[start..i])?;
            match esc {
                Some(e) => w.write_str(e)?,
                None => write!(w, "\\u{:04x}", c as u32)?,
            }
            start = i + c.len_utf8();
        }
    }
    w.write_str(&s[start..])
}

/// What an object and an array being written share: the sink, whether an item came yet (for
/// the commas), and the first write error, which sticks.
struct Level<'w, W: Write + ?Sized> {
    w: &'w mut W,
    first: bool,
    result: fmt::Result,
}

impl<'w, W: Write + ?Sized> Level<'w, W> {
    fn open(w: &'w mut W, open: char) -> Self {
        let result = w.write_char(open);
        Self {
            w,
            first: true,
            result,
        }
    }

    /// The separator before the next item: none before the first.
    fn separator(&mut self) -> &'static str {
        let sep = if self.first { "" } else { "," };
        self.first = false;
        sep
    }

    /// A level nested in this one, opened with `prefix` then `open`.
    fn nested(&mut self, prefix: &str, open: char) -> Level<'_, W> {
        let result = self
            .result
            .and_then(|_| self.w.write_str(prefix))
            .and_then(|_| self.w.write_char(open));
        Level {
            w: &mut *self.w,
            first: true,
            result,
        }
    }

    fn close(&mut self, close: char) -> fmt::Result {
        self.result = self.result.and_then(|_| self.w.write_char(close));
        self.result
    }
}

/// Writes `items` as a JSON array, each with `item`.
fn write_list<W: Write + ?Sized, T>(
    w: &mut W,
    items: &[T],
    item: impl Fn(&mut W, &T) -> fmt::Result,
) -> fmt::Result {
    w.write_char('[')?;
    for (i, x) in items.iter().enumerate() {
        if i > 0 {
            w.write_char(',')?;
        }
        item(w, x)?;
    }
    w.write_char(']')
}

/// One JSON object being written. Keys are written verbatim (they are literals in the
/// probe); values are escaped. The first write error sticks and is returned by [`end`].
///
/// [`end`]: Object::end
pub struct Object<'w, W: Write + ?Sized>(Level<'w, W>);

impl<'w, W: Write + ?Sized> Object<'w, W> {
    /// Starts an object (writes `{`).
    pub fn new(w: &'w mut W) -> Self {
        Self(Level::open(w, '{'))
    }

    fn key(&mut self, k: &str) {
        if self.0.result.is_err() {
            return;
        }
        let sep = self.0.separator();
        self.0.result = write!(self.0.w, "{sep}\"{k}\":");
    }

    fn value(&mut self, f: impl FnOnce(&mut W) -> fmt::Result) -> &mut Self {
        if self.0.result.is_ok() {
            self.0.result = f(self.0.w);
        }
        self
    }

    pub fn str(&mut self, k: &str, v: &str) -> &mut Self {
        self.key(k);
        self.value(|w| write_str(w, v))
    }

    pub fn u64(&mut self, k: &str, v: u64) -> &mut Self {
        self.key(k);
        self.value(|w| write!(w, "{v}"))
    }

    pub fn bool(&mut self, k: &str, v: bool) -> &mut Self {
        self.key(k);
        self.value(|w| w.write_str(if v { "true" } else { "false" }))
    }

    /// A number as a `"0x..."` string (addresses read better in hex; JSON has no hex).
    pub fn hex(&mut self, k: &str, v: u64) -> &mut Self {
        self.key(k);
        self.value(|w| write!(w, "\"{v:#x}\""))
    }

    pub fn null(&mut self, k: &str) -> &mut Self {
        self.key(k);
        self.value(|w| w.write_str("null"))
    }

    pub fn u32_list(&mut self, k: &str, v: &[u32]) -> &mut Self {
        self.key(k);
        self.value(|w| write_list(w, v, |w, x| write!(w, "{x}")))
    }

    pub fn str_list(&mut self, k: &str, v: &[&str]) -> &mut Self {
        self.key(k);
        self.value(|w| write_list(w, v, |w, x| write_str(w, x)))
    }

    /// A string value produced by `core::fmt` (escaped on the way through).
    pub fn fmt(&mut self, k: &str, args: fmt::Arguments<'_>) -> &mut Self {
        self.key(k);
        self.value(|w| {
            w.write_char('"')?;
            Escaper(w).write_fmt(args)?;
            w.write_char('"')
        })
    }

    /// A nested object under `k`; finish it with [`end`](Object::end) before writing on.
    pub fn object(&mut self, k: &str) -> Object<'_, W> {
        self.key(k);
        Object(self.0.nested("", '{'))
    }

    /// A nested array under `k`; finish it with [`Array::end`] before writing on.
    pub fn array(&mut self, k: &str) -> Array<'_, W> {
        self.key(k);
        Array(self.0.nested("", '['))
    }

    /// Closes the object (writes `}`).
    pub fn end(&mut self) -> fmt::Result {
        self.0.close('}')
    }
}

/// A JSON array of objects being written (see [`Object::array`]).
pub struct Array<'w, W: Write + ?Sized>(Level<'w, W>);

impl<W: Write + ?Sized> Array<'_, W> {
    /// Starts the next element, an object; finish it with [`Object::end`].
    pub fn object(&mut self) -> Object<'_, W> {
        let sep = self.0.separator();
        Object(self.0.nested(sep, '{'))
    }

    /// Closes the array (writes `]`).
    pub fn end(&mut self) -> fmt::Result {
        self.0.close(']')
    }
}

/// Escapes everything written through it as the inside of a JSON string.
struct Escaper<'a, W: Write + ?Sized>(&'a mut W);

impl<W: Write + ?Sized> Write for Escaper<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_escaped(self.0, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;

    fn esc(s: &str) -> String {
        let mut out = String::new();
        write_str(&mut out, s).unwrap();
        out
    }

    #[test]
    fn escaping() {
        assert_eq!(esc(""), r#""""#);
        assert_eq!(
            esc("console=ttyS0 probe.cpus=2"),
            r#""console=ttyS0 probe.cpus=2""#
        );
        assert_eq!(esc("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(esc("x\ny\tz\r"), r#""x\ny\tz\r""#);
        assert_eq!(esc("\u{1}\u{1f}\u{7f}"), r#""\u0001\u001f\u007f""#);
        assert_eq!(esc("grüße"), "\"grüße\"");
    }

    #[test]
    fn object() {
        let mut out = String::new();
        let mut o = Object::new(&mut out);
        o.str("probe", "pulse-probe")
            .bool("ok", true)
            .u64("n", 2)
            .u32_list("ids", &[0, 1])
            .u32_list("none", &[])
            .str_list("errors", &[])
            .str_list("e2", &["a\"", "b"])
            .hex("addr", 0xfec0_0000)
            .null("x");
        {
            let mut inner = o.object("exception");
            inner.u64("vector", 6).str("name", "#UD");
            inner.end().unwrap();
        }
        o.fmt("msg", format_args!("say \"{}\" {}", "hi", 5));
        o.end().unwrap();
        assert_eq!(
            out,
            r##"{"probe":"pulse-probe","ok":true,"n":2,"ids":[0,1],"none":[],"errors":[],"e2":["a\"","b"],"addr":"0xfec00000","x":null,"exception":{"vector":6,"name":"#UD"},"msg":"say \"hi\" 5"}"##
        );
    }

    #[test]
    fn arrays_of_objects() {
        let mut out = String::new();
        let mut o = Object::new(&mut out);
        o.u64("a", 1);
        {
            let mut arr = o.array("devices");
            for i in 0..2 {
                let mut d = arr.object();
                d.u64("i", i);
                {
                    let mut v = d.array("v");
                    v.object().u64("x", i).end().unwrap();
                    v.end().unwrap();
                }
                d.end().unwrap();
            }
            arr.end().unwrap();
        }
        o.array("empty").end().unwrap();
        o.bool("b", false);
        o.end().unwrap();
        assert_eq!(
            out,
            r#"{"a":1,"devices":[{"i":0,"v":[{"x":0}]},{"i":1,"v":[{"x":1}]}],"empty":[],"b":false}"#
        );
    }

    #[test]
    fn fmt_escapes_quotes_at_piece_edges() {
        let mut out = String::new();
        let mut o = Object::new(&mut out);
        o.fmt("m", format_args!("{}{}{}", "\"", "\"", "\\"));
        o.end().unwrap();
        assert_eq!(out, r#"{"m":"\"\"\\"}"#);
    }

    /// A sink that fails once `room` bytes are written.
    struct Full {
        out: String,
        room: usize,
    }

    impl Write for Full {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            if s.len() > self.room {
                return Err(fmt::Error);
            }
            self.room -= s.len();
            self.out.push_str(s);
            Ok(())
        }
    }

    #[test]
    fn the_first_write_error_sticks_to_the_end() {
        for room in [0, 3, 10, 20] {
            let mut sink = Full {
                out: String::new(),
                room,
            };
            let mut o = Object::new(&mut sink);
            o.u64("a", 1);
            {
                let mut arr = o.array("v");
                arr.object().u64("x", 2).end().ok();
                arr.end().ok();
            }
            o.str_list("s", &["t"]);
            assert_eq!(o.end(), Err(fmt::Error), "room {room}");
            assert!(sink.out.len() <= room);
        }
    }
}
