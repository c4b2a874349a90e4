//! A device setting in a configuration file, written either as its one-line string form (the
//! same as on the command line) or as a table of its keys.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// Deserializes a `T` from a string, parsed by `T::from_str`, or from a table `Table`,
/// converted by `T::try_from`. `expecting` names both forms: serde shows it when the value
/// is neither.
pub(crate) fn string_or_table<'de, D, T, Table>(
    d: D,
    expecting: &'static str,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + TryFrom<Table>,
    <T as FromStr>::Err: fmt::Display,
    <T as TryFrom<Table>>::Error: fmt::Display,
    Table: Deserialize<'de>,
{
    d.deserialize_any(StringOrTable {
        expecting,
        forms: PhantomData::<fn() -> (T, Table)>,
    })
}

struct StringOrTable<F> {
    expecting: &'static str,
    forms: PhantomData<F>,
}

impl<'de, T, Table> Visitor<'de> for StringOrTable<fn() -> (T, Table)>
where
    T: FromStr + TryFrom<Table>,
    <T as FromStr>::Err: fmt::Display,
    <T as TryFrom<Table>>::Error: fmt::Display,
    Table: Deserialize<'de>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
        s.parse().map_err(E::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        let table = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
        T::try_from(table).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Port(u16);

    impl FromStr for Port {
        type Err = String;

        fn from_str(s: &str) -> Result<Self, Self::Err> {
            let n = s.strip_prefix("port=").ok_or("no port=")?;
            n.parse().map(Port).map_err(|_| format!("'{n}' is no port"))
        }
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PortTable {
        port: u16,
    }

    impl TryFrom<PortTable> for Port {
        type Error = &'static str;

        fn try_from(t: PortTable) -> Result<Self, Self::Error> {
            match t.port {
                0 => Err("port 0 is reserved"),
                n => Ok(Port(n)),
            }
        }
    }

    impl<'de> Deserialize<'de> for Port {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            string_or_table::<_, _, PortTable>(d, "a port: \"port=N\" or { port = N }")
        }
    }

    #[derive(Deserialize)]
    struct File {
        p: Port,
    }

    fn parse(text: &str) -> Result<Port, String> {
        toml::from_str::<File>(text)
            .map(|f| f.p)
            .map_err(|e| e.message().to_string())
    }

    #[test]
    fn either_form_is_read() {
        assert_eq!(parse("p = \"port=7\""), Ok(Port(7)));
        assert_eq!(parse("p = { port = 8 }"), Ok(Port(8)));
    }

    #[test]
    fn each_error_names_its_cause() {
        for (text, wanted) in [
            ("p = 5", "a port: \"port=N\" or { port = N }"),
            ("p = \"port=x\"", "'x' is no port"),
            ("p = { port = 0 }", "port 0 is reserved"),
            ("p = { prot = 1 }", "prot"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(wanted), "{text}: {err}");
        }
    }
}
