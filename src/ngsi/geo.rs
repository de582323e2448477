//! NGSI geo attribute values to EWKB with an SRID (pure).
//!
//! Types and coordinate order follow NGSIv2 ("Geospatial properties of entities") as Orion and
//! Kafnus read them: the simple location formats carry `"lat, lon"` strings and become lon/lat
//! geometries; `geo:json` carries GeoJSON (RFC 7946, lon/lat) whose `Feature` is unwrapped to its
//! geometry and whose `FeatureCollection` becomes its one geometry or a `GEOMETRYCOLLECTION`.
//! PostGIS gets EWKB carrying the SRID whatever the column's type modifier. A malformed value
//! is an error, never an empty point (Kafnus wrote NaN points).
//!
//! EWKB is written straight from the parsed value ([`EwkbWriter`]): going through geozero
//! (serialise the GeoJSON to text, parse it again, encode) cost 12 % of the worker's CPU in a
//! benchmark drain (README, "Results and where the time goes"). The tests check every shape
//! byte for byte against geozero's own encoding.

use std::fmt;

use serde_json::Value as Json;

/// Why a geo attribute value could not be converted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid {ngsi_type} value: {reason}")]
pub struct GeoError {
    /// The NGSI type that was being converted (`geo:point`, …).
    pub ngsi_type: String,
    /// What was wrong, lowercase.
    pub reason: String,
}

/// True for the NGSI types this module converts (`geo:point`, `geo:line`, `geo:box`,
/// `geo:polygon`, `geo:json`), compared case-insensitively.
pub fn is_geo_type(ngsi_type: &str) -> bool {
    geo_type(ngsi_type).is_some()
}

/// The NGSI geo types, lower-case.
const GEO_TYPES: [&str; 5] = [
    "geo:point",
    "geo:line",
    "geo:box",
    "geo:polygon",
    "geo:json",
];

/// The lower-case geo type `ngsi_type` names, compared case-insensitively without allocating
/// (it is asked for every attribute).
fn geo_type(ngsi_type: &str) -> Option<&'static str> {
    GEO_TYPES
        .into_iter()
        .find(|g| g.eq_ignore_ascii_case(ngsi_type))
}

/// Converts a geo attribute value into EWKB bytes (little-endian) with `srid` embedded.
///
/// `value` is the attribute's JSON value (never `null`: callers map `null` to SQL NULL first).
///
/// # Errors
/// [`GeoError`] when the value does not have the shape its type requires, a coordinate is not a
/// finite number (or a lat/lon is out of range for the simple formats), a polygon ring is not
/// closed, or the type is not a geo type.
pub fn to_ewkb<V: GeoValue>(ngsi_type: &str, value: &V, srid: i32) -> Result<Vec<u8>, GeoError> {
    let ty = geo_type(ngsi_type);
    let err = |reason: String| GeoError {
        ngsi_type: ty.map_or_else(|| ngsi_type.to_ascii_lowercase(), str::to_string),
        reason,
    };
    match ty.unwrap_or_default() {
        "geo:point" => {
            let (lat, lon) = lat_lon(value).map_err(err)?;
            let mut w = EwkbWriter::new(false, HEADER_BYTES + 16);
            w.header(POINT, Some(srid));
            w.xy(lon, lat);
            Ok(w.out)
        }
        "geo:line" => {
            let pts = lat_lon_list(value).map_err(err)?;
            if pts.len() < 2 {
                return Err(err("a line needs at least 2 points".into()));
            }
            Ok(lat_lon_geometry(LINESTRING, &pts, srid))
        }
        "geo:box" => {
            let pts = lat_lon_list(value).map_err(err)?;
            if pts.len() != 2 {
                return Err(err("a box needs exactly 2 corners".into()));
            }
            let (lat_a, lon_a) = pts[0];
            let (lat_b, lon_b) = pts[1];
            let (s, n) = (lat_a.min(lat_b), lat_a.max(lat_b));
            let (w, e) = (lon_a.min(lon_b), lon_a.max(lon_b));
            let ring = [(s, w), (s, e), (n, e), (n, w), (s, w)];
            Ok(lat_lon_geometry(POLYGON, &ring, srid))
        }
        "geo:polygon" => {
            let pts = lat_lon_list(value).map_err(err)?;
            if pts.len() < 4 {
                return Err(err("a polygon ring needs at least 4 points".into()));
            }
            if pts.first() != pts.last() {
                return Err(err(
                    "polygon ring is not closed (first point != last point)".into(),
                ));
            }
            Ok(lat_lon_geometry(POLYGON, &pts, srid))
        }
        "geo:json" => geojson_to_ewkb(value, srid).map_err(err),
        _ => Err(err("not a geo type".into())),
    }
}

/// What the conversion reads of a JSON value. Implemented by `serde_json::Value` and by the
/// lighter tree (`ngsi::parsed`) that transform reads an attribute's compact text into; both
/// give the same EWKB and the same error messages (their `Display` is serde_json's compact
/// text).
pub trait GeoValue: fmt::Display + Sized {
    /// The member `key` of an object; `None` for anything else.
    fn member(&self, key: &str) -> Option<&Self>;
    /// The string, when it is one.
    fn text(&self) -> Option<&str>;
    /// The items, when it is an array.
    fn items(&self) -> Option<&[Self]>;
    /// The number as a finite `f64` (as `serde_json::Number::as_f64` reads a lexeme).
    fn finite(&self) -> Option<f64>;
    /// True for a number.
    fn is_number(&self) -> bool;
    /// True for an object.
    fn is_object(&self) -> bool;
}

impl GeoValue for Json {
    fn member(&self, key: &str) -> Option<&Self> {
        self.get(key)
    }
    fn text(&self) -> Option<&str> {
        self.as_str()
    }
    fn items(&self) -> Option<&[Self]> {
        self.as_array().map(Vec::as_slice)
    }
    fn finite(&self) -> Option<f64> {
        self.as_f64().filter(|f| f.is_finite())
    }
    fn is_number(&self) -> bool {
        Json::is_number(self)
    }
    fn is_object(&self) -> bool {
        Json::is_object(self)
    }
}

/// A GeoJSON value unwrapped from its features: one geometry object, or the geometries of a
/// FeatureCollection of several features (written as a GEOMETRYCOLLECTION).
enum Unwrapped<'v, V> {
    One(&'v V),
    Collection(Vec<Unwrapped<'v, V>>),
}

fn geojson_to_ewkb<V: GeoValue>(value: &V, srid: i32) -> Result<Vec<u8>, String> {
    let (kind, parts) = match unwrap_feature(value)? {
        Unwrapped::Collection(parts) => ("GeometryCollection", parts),
        Unwrapped::One(geometry) => {
            let kind = geometry
                .member("type")
                .and_then(V::text)
                .ok_or("GeoJSON object without a type")?;
            let parts = if kind == "GeometryCollection" {
                geometry
                    .member("geometries")
                    .and_then(V::items)
                    .ok_or("GeometryCollection without geometries")?
                    .iter()
                    .map(Unwrapped::One)
                    .collect()
            } else {
                vec![Unwrapped::One(geometry)]
            };
            (kind, parts)
        }
    };
    // A part of a collection: its type (empty when it has none) and coordinates; a nested
    // collection has no coordinates.
    fn part<'v, V: GeoValue>(p: &Unwrapped<'v, V>) -> Result<(&'v str, &'v V), String> {
        match p {
            Unwrapped::One(g) => Ok((
                g.member("type").and_then(V::text).unwrap_or_default(),
                g.member("coordinates")
                    .ok_or("geometry without coordinates")?,
            )),
            Unwrapped::Collection(_) => Err("geometry without coordinates".into()),
        }
    }
    let dims = match kind {
        "GeometryCollection" => {
            let mut max = 2;
            for p in &parts {
                let (kind, coords) = part(p)?;
                max = max.max(check_coordinates(coords)?);
                check_shape(kind, coords)?;
            }
            max
        }
        "Point" | "MultiPoint" | "LineString" | "MultiLineString" | "Polygon" | "MultiPolygon" => {
            let (_, coords) = part(&parts[0])?;
            let dims = check_coordinates(coords)?;
            check_shape(kind, coords)?;
            dims
        }
        other => return Err(format!("unsupported GeoJSON type {other:?}")),
    };
    // A point's size is known (the most common value); other shapes start at 64 bytes.
    let capacity = if kind == "Point" {
        HEADER_BYTES + 8 * dims
    } else {
        64
    };
    let mut w = EwkbWriter::new(dims == 3, capacity);
    if kind == "GeometryCollection" {
        w.header(GEOMETRYCOLLECTION, Some(srid));
        w.count(parts.len());
        for p in &parts {
            let (kind, coords) = part(p)?;
            w.geojson(kind, coords, None)?;
        }
    } else {
        let (_, coords) = part(&parts[0])?;
        w.geojson(kind, coords, Some(srid))?;
    }
    Ok(w.out)
}

/// OGC simple-features geometry type codes (ISO 19125-1, the WKB `wkbGeometryType`).
const POINT: u32 = 1;
const LINESTRING: u32 = 2;
const POLYGON: u32 = 3;
const MULTIPOINT: u32 = 4;
const MULTILINESTRING: u32 = 5;
const MULTIPOLYGON: u32 = 6;
const GEOMETRYCOLLECTION: u32 = 7;
/// PostGIS EWKB flags on the type word (liblwgeom `WKBZOFFSET`, `WKBSRIDFLAG`).
const EWKB_Z: u32 = 0x8000_0000;
const EWKB_SRID: u32 = 0x2000_0000;

/// A little-endian EWKB encoder: the SRID on the outer geometry only (as PostGIS writes it),
/// the Z flag on every geometry of a 3D value.
struct EwkbWriter {
    out: Vec<u8>,
    z: bool,
}

/// Bytes of an EWKB header with an SRID: byte order, type word, SRID.
const HEADER_BYTES: usize = 9;

impl EwkbWriter {
    /// A writer whose buffer holds `capacity` bytes: exact where the size is known, so that
    /// boxing the result (a record keeps it) neither copies nor wastes it.
    fn new(z: bool, capacity: usize) -> Self {
        Self {
            out: Vec::with_capacity(capacity),
            z,
        }
    }

    fn header(&mut self, code: u32, srid: Option<i32>) {
        let mut word = code;
        if self.z {
            word |= EWKB_Z;
        }
        if srid.is_some() {
            word |= EWKB_SRID;
        }
        self.out.push(1);
        self.out.extend_from_slice(&word.to_le_bytes());
        if let Some(srid) = srid {
            self.out.extend_from_slice(&srid.to_le_bytes());
        }
    }

    fn count(&mut self, n: usize) {
        // Counts come from values far below 4 GiB elements (the message size limit).
        self.out
            .extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
    }

    fn xy(&mut self, x: f64, y: f64) {
        self.out.extend_from_slice(&x.to_le_bytes());
        self.out.extend_from_slice(&y.to_le_bytes());
    }

    /// A position already checked by [`check_coordinates`]; a 2D position in a 3D value gets
    /// z = 0, as geozero writes it.
    fn position<V: GeoValue>(&mut self, p: &V) -> Result<(), String> {
        let n = |i: usize| p.items().and_then(|a| a.get(i)).and_then(V::finite);
        let (Some(x), Some(y)) = (n(0), n(1)) else {
            return Err(format!("a position must be 2 or 3 numbers, got {p}"));
        };
        self.xy(x, y);
        if self.z {
            self.out
                .extend_from_slice(&n(2).unwrap_or(0.0).to_le_bytes());
        }
        Ok(())
    }

    fn positions<V: GeoValue>(&mut self, c: &V) -> Result<(), String> {
        let list = nested(c)?;
        self.count(list.len());
        list.iter().try_for_each(|p| self.position(p))
    }

    fn rings<V: GeoValue>(&mut self, c: &V) -> Result<(), String> {
        let rings = nested(c)?;
        self.count(rings.len());
        rings.iter().try_for_each(|r| self.positions(r))
    }

    /// One GeoJSON geometry of `kind` (validated by [`check_shape`] and
    /// [`check_coordinates`]); a nesting that does not fit the kind is an error.
    fn geojson<V: GeoValue>(&mut self, kind: &str, c: &V, srid: Option<i32>) -> Result<(), String> {
        match kind {
            "Point" => {
                self.header(POINT, srid);
                self.position(c)
            }
            "LineString" => {
                self.header(LINESTRING, srid);
                self.positions(c)
            }
            "Polygon" => {
                self.header(POLYGON, srid);
                self.rings(c)
            }
            "MultiPoint" | "MultiLineString" | "MultiPolygon" => {
                let (code, part) = match kind {
                    "MultiPoint" => (MULTIPOINT, "Point"),
                    "MultiLineString" => (MULTILINESTRING, "LineString"),
                    _ => (MULTIPOLYGON, "Polygon"),
                };
                let parts = nested(c)?;
                self.header(code, srid);
                self.count(parts.len());
                parts.iter().try_for_each(|p| self.geojson(part, p, None))
            }
            other => Err(format!("unsupported GeoJSON type {other:?}")),
        }
    }
}

/// The members of a coordinates array that must hold arrays (not a bare position).
fn nested<V: GeoValue>(c: &V) -> Result<&[V], String> {
    match c.items() {
        Some(a) if a.iter().all(|i| i.items().is_some()) => Ok(a),
        _ => Err(format!("coordinates nested too shallowly: {c}")),
    }
}

/// A geometry of lat/lon pairs (NGSI simple location formats), written lon/lat: a LineString,
/// or a Polygon of one ring.
fn lat_lon_geometry(code: u32, pts: &[(f64, f64)], srid: i32) -> Vec<u8> {
    let rings = usize::from(code == POLYGON);
    let mut w = EwkbWriter::new(false, HEADER_BYTES + 4 * (rings + 1) + 16 * pts.len());
    w.header(code, Some(srid));
    if code == POLYGON {
        w.count(1);
    }
    w.count(pts.len());
    for &(lat, lon) in pts {
        w.xy(lon, lat);
    }
    w.out
}

/// Feature → its geometry; FeatureCollection → its only geometry, or a GeometryCollection.
fn unwrap_feature<V: GeoValue>(value: &V) -> Result<Unwrapped<'_, V>, String> {
    match value.member("type").and_then(V::text) {
        Some("Feature") => match value.member("geometry") {
            Some(g) if g.is_object() => Ok(Unwrapped::One(g)),
            _ => Err("Feature without a geometry".into()),
        },
        Some("FeatureCollection") => {
            let features = value
                .member("features")
                .and_then(V::items)
                .ok_or("FeatureCollection without features")?;
            let mut geoms = features
                .iter()
                .map(unwrap_feature)
                .collect::<Result<Vec<_>, _>>()?;
            match geoms.len() {
                0 => Err("FeatureCollection with no features".into()),
                1 => Ok(geoms.remove(0)),
                _ => Ok(Unwrapped::Collection(geoms)),
            }
        }
        Some(_) => Ok(Unwrapped::One(value)),
        None => Err("value is not a GeoJSON object".into()),
    }
}

/// Checks what RFC 7946 §3.1 requires of a geometry's shape beyond its positions: a LineString
/// has at least 2 positions, and every Polygon ring (linear ring) at least 4 with the last equal
/// to the first. PostGIS would store such a value as an invalid geometry without complaint.
/// Positions are already checked ([`check_coordinates`]).
fn check_shape<V: GeoValue>(kind: &str, coords: &V) -> Result<(), String> {
    fn list<V: GeoValue>(c: &V) -> &[V] {
        c.items().unwrap_or_default()
    }
    fn line<V: GeoValue>(c: &V) -> Result<(), String> {
        let n = list(c).len();
        if n < 2 {
            return Err(format!("a LineString needs at least 2 positions, got {n}"));
        }
        Ok(())
    }
    fn ring<V: GeoValue>(c: &V) -> Result<(), String> {
        let pts = list(c);
        if pts.len() < 4 {
            return Err(format!(
                "a Polygon ring needs at least 4 positions, got {}",
                pts.len()
            ));
        }
        // Compared as numbers: `[0, 0]` closes a ring opened by `[0.0, 0.0]`.
        let position = |p: Option<&V>| -> Vec<f64> {
            p.and_then(V::items)
                .map(|a| a.iter().filter_map(V::finite).collect())
                .unwrap_or_default()
        };
        if position(pts.first()) != position(pts.last()) {
            return Err("Polygon ring is not closed (first position != last position)".into());
        }
        Ok(())
    }
    fn polygon<V: GeoValue>(c: &V) -> Result<(), String> {
        list(c).iter().try_for_each(ring)
    }
    match kind {
        "LineString" => line(coords),
        "MultiLineString" => list(coords).iter().try_for_each(line),
        "Polygon" => polygon(coords),
        "MultiPolygon" => list(coords).iter().try_for_each(polygon),
        _ => Ok(()),
    }
}

/// Checks every position is 2 or 3 finite numbers; returns the largest dimension seen.
fn check_coordinates<V: GeoValue>(c: &V) -> Result<usize, String> {
    let arr = c.items().ok_or("coordinates must be arrays")?;
    if arr.first().is_some_and(V::is_number) {
        if !(2..=3).contains(&arr.len()) {
            return Err(format!(
                "a position must have 2 or 3 numbers, got {}",
                arr.len()
            ));
        }
        for n in arr {
            let f = n.finite();
            if f.is_none() {
                return Err(format!("coordinate {n} is not a finite number"));
            }
        }
        return Ok(arr.len());
    }
    if arr.is_empty() {
        return Err("empty coordinates".into());
    }
    let mut max = 2;
    for inner in arr {
        max = max.max(check_coordinates(inner)?);
    }
    Ok(max)
}

fn lat_lon<V: GeoValue>(value: &V) -> Result<(f64, f64), String> {
    let s = value
        .text()
        .ok_or_else(|| format!("expected a \"lat, lon\" string, got {value}"))?;
    let mut parts = s.split(',');
    let (Some(lat), Some(lon), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("expected \"lat, lon\", got {s:?}"));
    };
    let parse = |p: &str, what: &str, limit: f64| -> Result<f64, String> {
        let v: f64 = p
            .trim()
            .parse()
            .map_err(|_| format!("{what} {:?} is not a number", p.trim()))?;
        if !v.is_finite() || v.abs() > limit {
            return Err(format!("{what} {v} is out of range [-{limit}, {limit}]"));
        }
        Ok(v)
    };
    Ok((
        parse(lat, "latitude", 90.0)?,
        parse(lon, "longitude", 180.0)?,
    ))
}

fn lat_lon_list<V: GeoValue>(value: &V) -> Result<Vec<(f64, f64)>, String> {
    value
        .items()
        .ok_or_else(|| format!("expected an array of \"lat, lon\" strings, got {value}"))?
        .iter()
        .map(lat_lon)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// EWKB header check: little-endian, type with the SRID flag, SRID 4326.
    fn header(ewkb: &[u8]) -> (u32, i32) {
        assert_eq!(ewkb[0], 1, "little endian");
        let ty = u32::from_le_bytes(ewkb[1..5].try_into().unwrap());
        assert!(ty & 0x2000_0000 != 0, "SRID flag set");
        let srid = i32::from_le_bytes(ewkb[5..9].try_into().unwrap());
        (ty & 0xff, srid)
    }

    /// Points, lines and polygons are written into a buffer of exactly their size, which a
    /// record then keeps boxed without a copy.
    #[test]
    fn known_sizes_fill_their_buffer_exactly() {
        let cases = [
            ("geo:point", json!("40.4168, -3.7038")),
            ("geo:line", json!(["1.4168, -1.7038", "1.4178, -1.7028"])),
            ("geo:polygon", json!(["1, 1", "1, 2", "2, 2", "1, 1"])),
            (
                "geo:json",
                json!({"type": "Point", "coordinates": [-3.7, 40.4]}),
            ),
            (
                "geo:json",
                json!({"type": "Point", "coordinates": [-3.7, 40.4, 650.0]}),
            ),
        ];
        for (ty, value) in cases {
            let ewkb = to_ewkb(ty, &value, 4326).unwrap();
            assert_eq!(ewkb.capacity(), ewkb.len(), "{ty} {value}");
        }
    }

    #[test]
    fn converts_every_geo_type() {
        let cases = [
            ("geo:point", json!("40.4168, -3.7038"), 1),
            ("geo:line", json!(["1.4168, -1.7038", "1.4178, -1.7028"]), 2),
            ("geo:box", json!(["1.0, -2.0", "2.0, -1.0"]), 3),
            (
                "geo:polygon",
                json!([
                    "1.4168, -1.704",
                    "1.4175, -1.703",
                    "1.4162, -1.702",
                    "1.4168, -1.704"
                ]),
                3,
            ),
            (
                "geo:json",
                json!({"type": "Point", "coordinates": [-3.7, 40.4]}),
                1,
            ),
            (
                "geo:json",
                json!({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}),
                2,
            ),
            (
                "geo:json",
                json!({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}),
                3,
            ),
            (
                "geo:json",
                json!({"type": "MultiPoint", "coordinates": [[0, 0], [1, 1]]}),
                4,
            ),
            (
                "geo:json",
                json!({"type": "MultiLineString", "coordinates": [[[0, 0], [1, 1]], [[2, 2], [3, 3]]]}),
                5,
            ),
            (
                "geo:json",
                json!({"type": "MultiPolygon", "coordinates": [[[[0, 0], [1, 0], [1, 1], [0, 0]]]]}),
                6,
            ),
            (
                "geo:json",
                json!({"type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": [0, 0]}]}),
                7,
            ),
            (
                "geo:json",
                json!({"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [1, 2]}}),
                1,
            ),
            (
                "geo:json",
                json!({"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}}]}),
                1,
            ),
            (
                "geo:json",
                json!({"type": "FeatureCollection", "features": [
                {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}},
                {"type": "Feature", "geometry": {"type": "Point", "coordinates": [3, 4]}}]}),
                7,
            ),
            ("GEO:POINT", json!("90.0,180.0"), 1),
        ];
        for (ty, value, want_type) in cases {
            let ewkb = to_ewkb(ty, &value, 4326).unwrap_or_else(|e| panic!("{ty} {value}: {e}"));
            assert_eq!(header(&ewkb), (want_type, 4326), "{ty} {value}");
        }
    }

    /// geozero's EWKB of the same value: the encoding this module used before it wrote EWKB
    /// itself (WKT for the simple formats, GeoJSON text for geo:json).
    fn geozero_ewkb(ty: &str, value: &Json) -> Vec<u8> {
        use geozero::{geojson::GeoJson, wkt::Wkt, CoordDimensions, ToWkb};
        let pair = |s: &Json| {
            let (lat, lon) = lat_lon(s).unwrap();
            format!("{lon} {lat}")
        };
        let list = |v: &Json| {
            let pts: Vec<String> = v.as_array().unwrap().iter().map(pair).collect();
            pts.join(",")
        };
        let wkt = match ty {
            "geo:point" => format!("POINT({})", pair(value)),
            "geo:line" => format!("LINESTRING({})", list(value)),
            "geo:polygon" => format!("POLYGON(({}))", list(value)),
            _ => {
                fn tree(u: Unwrapped<'_, Json>) -> Json {
                    match u {
                        Unwrapped::One(g) => g.clone(),
                        Unwrapped::Collection(parts) => json!({"type": "GeometryCollection",
                            "geometries": parts.into_iter().map(tree).collect::<Vec<_>>()}),
                    }
                }
                let g = tree(unwrap_feature(value).unwrap());
                let dims = if g.to_string().contains("[1,2,3]") || g.to_string().contains(",9]") {
                    CoordDimensions::xyz()
                } else {
                    CoordDimensions::xy()
                };
                return GeoJson(&g.to_string()).to_ewkb(dims, Some(4326)).unwrap();
            }
        };
        Wkt(wkt.as_str())
            .to_ewkb(CoordDimensions::xy(), Some(4326))
            .unwrap()
    }

    #[test]
    fn ewkb_is_byte_for_byte_geozeros() {
        let cases = [
            ("geo:point", json!("40.4168, -3.7038")),
            (
                "geo:line",
                json!(["1.4168, -1.7038", "1.4178, -1.7028", "-0.5, 3e-7"]),
            ),
            ("geo:polygon", json!(["1, 2", "1.5, 2", "1.5, 3", "1, 2"])),
            (
                "geo:json",
                json!({"type": "Point", "coordinates": [-3.7, 40.4]}),
            ),
            (
                "geo:json",
                json!({"type": "Point", "coordinates": [1, 2, 3]}),
            ),
            (
                "geo:json",
                json!({"type": "LineString", "coordinates": [[0, 0], [1, 1], [2.5, -1e-3]]}),
            ),
            (
                "geo:json",
                json!({"type": "LineString", "coordinates": [[0, 0, 9], [1, 1, 9]]}),
            ),
            (
                "geo:json",
                json!({"type": "LineString", "coordinates": [[0, 0, 9], [1, 1]]}),
            ),
            (
                "geo:json",
                json!({"type": "Polygon", "coordinates": [
                [[0, 0], [10, 0], [10, 10], [0, 0]], [[1, 1], [2, 1], [2, 2], [1, 1]]]}),
            ),
            (
                "geo:json",
                json!({"type": "MultiPoint", "coordinates": [[0, 0], [1, 1]]}),
            ),
            (
                "geo:json",
                json!({"type": "MultiLineString", "coordinates": [[[0, 0], [1, 1]], [[2, 2], [3, 3]]]}),
            ),
            (
                "geo:json",
                json!({"type": "MultiPolygon", "coordinates": [
                [[[0, 0], [1, 0], [1, 1], [0, 0]]], [[[5, 5], [6, 5], [6, 6], [5, 5]]]]}),
            ),
            (
                "geo:json",
                json!({"type": "GeometryCollection", "geometries": [
                {"type": "Point", "coordinates": [0, 0]},
                {"type": "LineString", "coordinates": [[0, 0], [1, 1]]},
                {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}]}),
            ),
            (
                "geo:json",
                json!({"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [1, 2]}}),
            ),
            (
                "geo:json",
                json!({"type": "FeatureCollection", "features": [
                {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}},
                {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": [[3, 4], [5, 6]]}}]}),
            ),
        ];
        for (ty, value) in cases {
            let ours = to_ewkb(ty, &value, 4326).unwrap_or_else(|e| panic!("{ty} {value}: {e}"));
            assert_eq!(
                hex::encode(ours),
                hex::encode(geozero_ewkb(ty, &value)),
                "{ty} {value}"
            );
        }
    }

    #[test]
    fn coordinates_nested_unlike_their_type_are_errors() {
        for value in [
            json!({"type": "Point", "coordinates": [[1, 2]]}),
            json!({"type": "LineString", "coordinates": [1, 2]}),
            json!({"type": "LineString", "coordinates": [[[1, 2], [3, 4]]]}),
            json!({"type": "Polygon", "coordinates": [[1, 2], [3, 4], [5, 6], [1, 2]]}),
            json!({"type": "MultiPoint", "coordinates": [1, 2]}),
        ] {
            assert!(
                to_ewkb("geo:json", &value, 4326).is_err(),
                "{value} should fail"
            );
        }
    }

    #[test]
    fn point_is_lon_lat() {
        let ewkb = to_ewkb("geo:point", &json!("90.0,180.0"), 4326).unwrap();
        let x = f64::from_le_bytes(ewkb[9..17].try_into().unwrap());
        let y = f64::from_le_bytes(ewkb[17..25].try_into().unwrap());
        assert_eq!((x, y), (180.0, 90.0));
    }

    #[test]
    fn three_d_geojson_keeps_z() {
        let ewkb = to_ewkb(
            "geo:json",
            &json!({"type": "Point", "coordinates": [1, 2, 3]}),
            4326,
        )
        .unwrap();
        let ty = u32::from_le_bytes(ewkb[1..5].try_into().unwrap());
        assert!(ty & 0x8000_0000 != 0, "Z flag set");
    }

    #[test]
    fn a_ring_closes_on_equal_numbers_whatever_their_spelling() {
        let v = json!({"type": "Polygon", "coordinates": [[[0.0, 0.0], [0, 1], [1, 1], [0, 0]]]});
        assert!(to_ewkb("geo:json", &v, 4326).is_ok());
    }

    #[test]
    fn malformed_values_are_errors() {
        let cases = [
            ("geo:point", json!("abc")),
            ("geo:point", json!("91, 0")),
            ("geo:point", json!("1, 2, 3")),
            ("geo:point", json!([1, 2])),
            ("geo:line", json!(["1, 2"])),
            ("geo:box", json!(["1, 2"])),
            ("geo:polygon", json!(["0, 0", "0, 1", "1, 1", "1, 0"])),
            (
                "geo:json",
                json!({"type": "Point", "coordinates": ["a", 1]}),
            ),
            ("geo:json", json!({"type": "Point", "coordinates": [1]})),
            ("geo:json", json!({"type": "Circle", "coordinates": [1, 2]})),
            ("geo:json", json!({"type": "Feature", "geometry": null})),
            ("geo:json", json!("POINT(1 2)")),
            ("geo:circle", json!("1, 2")),
            // Shapes RFC 7946 forbids, which PostGIS would store as invalid geometries.
            (
                "geo:json",
                json!({"type": "Polygon", "coordinates": [[[0, 0], [0, 1], [1, 1], [1, 0]]]}),
            ),
            (
                "geo:json",
                json!({"type": "Polygon", "coordinates": [[[0, 0], [0, 1]]]}),
            ),
            (
                "geo:json",
                json!({"type": "MultiPolygon", "coordinates": [[[[0, 0], [0, 1], [1, 1], [0, 0]]], [[[5, 5], [5, 6], [6, 6]]]]}),
            ),
            (
                "geo:json",
                json!({"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0]]}}),
            ),
            (
                "geo:json",
                json!({"type": "GeometryCollection", "geometries": [{"type": "Polygon", "coordinates": [[[0, 0], [0, 1], [1, 1], [1, 0]]]}]}),
            ),
        ];
        for (ty, value) in cases {
            assert!(
                to_ewkb(ty, &value, 4326).is_err(),
                "{ty} {value} should fail"
            );
        }
    }

    /// Transform converts a value's compact text through the light tree; every case gives what
    /// the serde_json tree gives, bytes and messages alike.
    #[test]
    fn the_light_tree_converts_as_the_json_tree() {
        use crate::ngsi::parsed::Parsed;
        let cases = [
            ("geo:point", json!("40.4168, -3.7038")),
            ("geo:point", json!("abc")),
            ("geo:point", json!([1, 2])),
            ("geo:line", json!(["1, 2", "3, 4"])),
            ("geo:box", json!(["1, 2"])),
            ("geo:polygon", json!(["0, 0", "0, 1", "1, 1", "0, 0"])),
            ("geo:polygon", json!({"a": 1})),
            (
                "geo:json",
                json!({"type": "Point", "coordinates": [-3.70, 4.0e1]}),
            ),
            (
                "geo:json",
                json!({"type": "Point", "coordinates": [1, 2, 3]}),
            ),
            ("geo:json", json!({"type": "Point", "coordinates": [1]})),
            (
                "geo:json",
                json!({"type": "Point", "coordinates": ["a", 1]}),
            ),
            (
                "geo:json",
                json!({"type": "Point", "coordinates": [[1, 2]]}),
            ),
            ("geo:json", json!({"type": "Point"})),
            ("geo:json", json!({"coordinates": [1, 2]})),
            ("geo:json", json!({"type": "Circle", "coordinates": [1, 2]})),
            (
                "geo:json",
                json!({"type": "LineString", "coordinates": [[0, 0, 9], [1, 1]]}),
            ),
            (
                "geo:json",
                json!({"type": "LineString", "coordinates": [[0, 0]]}),
            ),
            ("geo:json", json!({"type": "LineString", "coordinates": []})),
            (
                "geo:json",
                json!({"type": "Polygon", "coordinates": [[[0, 0], [0, 1], [1, 1], [1, 0]]]}),
            ),
            (
                "geo:json",
                json!({"type": "Polygon", "coordinates": [[[0.0, 0.0], [0, 1], [1, 1], [0, 0]]]}),
            ),
            (
                "geo:json",
                json!({"type": "MultiPolygon", "coordinates": [[[[0, 0], [1, 0], [1, 1], [0, 0]]], [[[5, 5], [6, 5], [6, 6], [5, 5]]]]}),
            ),
            (
                "geo:json",
                json!({"type": "MultiPoint", "coordinates": [1, 2]}),
            ),
            (
                "geo:json",
                json!({"type": "GeometryCollection", "geometries": [
                {"type": "Point", "coordinates": [0, 0]}, {"type": "LineString", "coordinates": [[0, 0], [1, 1, 2]]}]}),
            ),
            (
                "geo:json",
                json!({"type": "GeometryCollection", "geometries": [{"type": "Point"}]}),
            ),
            ("geo:json", json!({"type": "GeometryCollection"})),
            (
                "geo:json",
                json!({"type": "Feature", "properties": {"x": [1, {}]}, "geometry": {"type": "Point", "coordinates": [1, 2]}}),
            ),
            ("geo:json", json!({"type": "Feature", "geometry": null})),
            (
                "geo:json",
                json!({"type": "FeatureCollection", "features": []}),
            ),
            (
                "geo:json",
                json!({"type": "FeatureCollection", "features": [
                {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}}]}),
            ),
            (
                "geo:json",
                json!({"type": "FeatureCollection", "features": [
                {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}},
                {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": [[3, 4], [5, 6]]}}]}),
            ),
            (
                "geo:json",
                json!({"type": "FeatureCollection", "features": [
                {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}},
                {"type": "FeatureCollection", "features": [
                    {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}},
                    {"type": "Feature", "geometry": {"type": "Point", "coordinates": [3, 4]}}]}]}),
            ),
            (
                "geo:json",
                json!({"type": "FeatureCollection", "features": [{"type": "Feature"}]}),
            ),
            ("geo:json", json!("POINT(1 2)")),
            ("geo:json", json!([1, 2])),
        ];
        let mut texts: Vec<(&str, String)> =
            cases.iter().map(|(t, v)| (*t, v.to_string())).collect();
        // Lexemes a tree keeps: a coordinate too large for f64, exponents, a repeated member.
        for text in [
            r#"{"type":"Point","coordinates":[1e400,2]}"#,
            r#"{"type":"Point","coordinates":[1E2,-2.5e-3]}"#,
            r#"{"type":"Point","coordinates":[1,2],"type":"LineString"}"#,
        ] {
            texts.push(("geo:json", text.to_string()));
        }
        for (ty, text) in texts {
            let tree: Json = serde_json::from_str(&text).unwrap();
            let light = Parsed::read(&text).unwrap();
            assert_eq!(
                to_ewkb(ty, &light, 4326),
                to_ewkb(ty, &tree, 4326),
                "{ty} {text}"
            );
        }
    }
}
