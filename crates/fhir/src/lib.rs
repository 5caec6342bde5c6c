//! A partner's referral as FHIR R4: a ServiceRequest with its Patient
//! contained, or a Bundle (`transaction` or `collection`) holding Patient +
//! ServiceRequest. [`read_referral`] validates the R4 subset a referral
//! uses and returns what the line needs ([`Referral`]), or a [`Rejection`]
//! naming the JSON path at fault and the kind of check that refused it.
//!
//! Checks run in a fixed order over the whole document, one kind at a
//! time: json, structure (element names, types, required elements,
//! primitive formats, no empty values), binding (required value sets),
//! invariant (ref-1, dom-2 to dom-4, bdl-3, bdl-7, bdl-8), reference
//! (`urn:uuid` references inside a Bundle), then the gateway's own rules
//! (a ServiceRequest, `active`, a Patient in the payload with a phone).
//! Why a hand-written subset rather than an R4 model crate: ADR 0013.
//!
//! A rejection never carries a value from the document: only element
//! names, array indexes and fixed words, so it can be logged and sent back.

pub mod r4;

use nwd_proto::referral::{Identifier, MAX_REFERRAL_BYTES, Priority, ReferredPatient};
use nwd_proto::risk::Language;
use nwd_proto::{Address, PhoneNumber};
use serde_json::{Map, Value};
use time::OffsetDateTime;

/// R4's limit on one string (1 MB).
const MAX_STRING_BYTES: usize = 1024 * 1024;

/// What the line takes from a referral. Personal data: never logged.
#[derive(Debug, Clone, PartialEq)]
pub struct Referral {
    pub priority: Priority,
    /// `occurrenceDateTime`, or `occurrencePeriod.start`. A date without a
    /// time is taken as its start in UTC.
    pub occurrence: Option<OffsetDateTime>,
    pub patient: ReferredPatient,
    /// `reasonCode` (text, else the first coding's display) and `note`
    /// texts, for the counsellor only.
    pub reason: Option<String>,
    /// The ServiceRequest's reference as sent: its Bundle entry's fullUrl,
    /// else `ServiceRequest/<id>`.
    pub focus: Option<String>,
    /// The ServiceRequest's first identifier.
    pub identifier: Option<Identifier>,
}

/// Which kind of check refused a document (the test data's `rejected_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Check {
    /// Not a JSON object.
    Json,
    /// Element names, JSON types, cardinality, primitive formats.
    Structure,
    /// A code outside a required value set.
    Binding,
    /// An R4 constraint (ref-1, dom-3, bdl-3…).
    Invariant,
    /// A Bundle reference that resolves to no entry.
    Reference,
    /// Valid FHIR that is not a referral the line can act on.
    Gateway,
}

impl Check {
    /// The test data's word for it, also a bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Json => "json",
            Check::Structure => "structure",
            Check::Binding => "binding",
            Check::Invariant => "invariant",
            Check::Reference => "reference",
            Check::Gateway => "gateway",
        }
    }

    /// Whether the document is invalid FHIR (OperationOutcome `invalid`)
    /// rather than valid FHIR the line does not take (`not-supported`,
    /// `business-rule`…).
    pub fn is_invalid_fhir(self) -> bool {
        !matches!(self, Check::Gateway)
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a document is not a referral. `path` is the JSON path at fault
/// (`subject.reference`, `contained[0].telecom`, `entry[1].request`), `None`
/// when the whole document is. The message holds no value from the document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{check} check failed at {}: {message}", path.as_deref().unwrap_or("the document"))]
pub struct Rejection {
    pub check: Check,
    pub path: Option<String>,
    pub message: String,
    /// Whether this is the size rule (the gateway answers 413).
    pub too_large: bool,
}

impl Rejection {
    fn new(check: Check, path: impl Into<String>, message: impl Into<String>) -> Self {
        let path = path.into();
        Self {
            check,
            path: (!path.is_empty()).then_some(path),
            message: message.into(),
            too_large: false,
        }
    }

    fn document(check: Check, message: &str) -> Self {
        Self {
            check,
            path: None,
            message: message.to_owned(),
            too_large: false,
        }
    }
}

type Checked<T = ()> = Result<T, Rejection>;

fn structure(path: &str, message: impl Into<String>) -> Rejection {
    Rejection::new(Check::Structure, path, message)
}

fn at(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// Reads and validates a referral body.
pub fn read_referral(body: &[u8]) -> Checked<Referral> {
    if body.len() > MAX_REFERRAL_BYTES {
        return Err(Rejection {
            too_large: true,
            ..Rejection::document(Check::Gateway, "the body is over 1 MiB")
        });
    }
    let document: Value = serde_json::from_slice(body)
        .map_err(|_| Rejection::document(Check::Json, "the body is not JSON"))?;
    let Value::Object(root) = &document else {
        return Err(Rejection::document(
            Check::Json,
            "the body is not a JSON object",
        ));
    };

    // structure
    primitives(&document, "")?;
    let kind = resource_type(root, "")?;
    match kind {
        "ServiceRequest" | "Bundle" => {}
        _ => {
            return Err(Rejection::new(
                Check::Gateway,
                "resourceType",
                "only a ServiceRequest or a Bundle holding one is a referral",
            ));
        }
    }
    if kind == "Bundle" {
        bundle_structure(root)?;
        let entries = entries(root);
        bundle_bindings(root, &entries)?;
        for (i, entry) in &entries {
            if let Some(resource) = entry.get("resource").and_then(Value::as_object) {
                bindings(resource, &resource_path(*i))?;
            }
        }
        bundle_invariants(root, &entries)?;
        for (i, entry) in &entries {
            if let Some(resource) = entry.get("resource").and_then(Value::as_object) {
                container_invariants(resource, &resource_path(*i))?;
            }
        }
        bundle_references(&entries)?;
        read_from_bundle(root, &entries)
    } else {
        resource_structure(root, "")?;
        bindings(root, "")?;
        container_invariants(root, "")?;
        let sr = ServiceRequest::read(root, "")?;
        let (patient, patient_path) = match subject_reference(root, "")? {
            Local(id) => contained_patient(root, "", id)?,
            Outside => {
                return Err(Rejection::new(
                    Check::Gateway,
                    "subject.reference",
                    "the Patient must be contained in the ServiceRequest (or sent in a Bundle): the line needs their phone",
                ));
            }
        };
        let focus = root
            .get("id")
            .and_then(Value::as_str)
            .map(|id| format!("ServiceRequest/{id}"));
        sr.into_referral(patient, &patient_path, focus)
    }
}

fn resource_path(entry: usize) -> String {
    format!("entry[{entry}].resource")
}

fn resource_type<'a>(resource: &'a Map<String, Value>, path: &str) -> Checked<&'a str> {
    let field = at(path, "resourceType");
    let kind = resource
        .get("resourceType")
        .ok_or_else(|| structure(&field, "every resource needs a resourceType"))?
        .as_str()
        .ok_or_else(|| structure(&field, "resourceType must be a string"))?;
    if r4::RESOURCE_TYPES.contains(&kind) {
        Ok(kind)
    } else {
        Err(structure(&field, "not an R4 resource type"))
    }
}

// --------------------------------------------------------------- structure

/// ele-1 (no null, empty string, array or object), the 1 MB string limit,
/// and the dateTime format (a time needs a timezone), over the whole
/// document.
fn primitives(value: &Value, path: &str) -> Checked {
    match value {
        Value::Null => Err(structure(path, "null is not a FHIR value")),
        Value::String(s) if s.is_empty() => Err(structure(path, "empty strings are not allowed")),
        Value::String(s) if s.len() > MAX_STRING_BYTES => {
            Err(structure(path, "a string is over R4's 1 MB limit"))
        }
        Value::Array(items) if items.is_empty() => {
            Err(structure(path, "empty arrays are not allowed"))
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| primitives(item, &index(path, i))),
        Value::Object(map) if map.is_empty() => {
            Err(structure(path, "empty objects are not allowed"))
        }
        Value::Object(map) => map.iter().try_for_each(|(key, item)| {
            let field = at(path, key);
            if r4::DATE_TIME_ELEMENTS.contains(&key.as_str()) {
                match item {
                    Value::String(s) => {
                        date_time(s).map_err(|message| structure(&field, message))?;
                    }
                    _ => return Err(structure(&field, "a dateTime must be a string")),
                }
            }
            // A primitive array's extensions (`_given`) keep the array's
            // positions: `null` stands for an element without one.
            if key.starts_with('_')
                && let Value::Array(items) = item
                && items.iter().any(|i| !i.is_null())
            {
                return items
                    .iter()
                    .enumerate()
                    .filter(|(_, i)| !i.is_null())
                    .try_for_each(|(i, item)| primitives(item, &index(&field, i)));
            }
            primitives(item, &field)
        }),
        _ => Ok(()),
    }
}

/// Parses an R4 `dateTime`: `YYYY`, `YYYY-MM`, `YYYY-MM-DD`, or a full
/// date and time, which must carry a timezone.
fn date_time(s: &str) -> Result<OffsetDateTime, &'static str> {
    if s.contains('T') {
        return OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map_err(|_| "a dateTime with a time needs seconds and a timezone (Z or ±hh:mm)");
    }
    let bad = "not an R4 dateTime (YYYY, YYYY-MM, YYYY-MM-DD or a full date-time)";
    let parts: Vec<&str> = s.split('-').collect();
    let number = |p: &str, len: usize| {
        (p.len() == len && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<u16>().ok())
            .flatten()
    };
    let year = parts.first().and_then(|p| number(p, 4)).ok_or(bad)?;
    let month = match parts.get(1) {
        None => 1,
        Some(p) => number(p, 2).ok_or(bad)?,
    };
    let day = match parts.get(2) {
        None => 1,
        Some(p) => number(p, 2).ok_or(bad)?,
    };
    if parts.len() > 3 {
        return Err(bad);
    }
    let month = time::Month::try_from(u8::try_from(month).map_err(|_| bad)?).map_err(|_| bad)?;
    let day = u8::try_from(day).map_err(|_| bad)?;
    let date = time::Date::from_calendar_date(i32::from(year), month, day).map_err(|_| bad)?;
    Ok(date.midnight().assume_utc())
}

/// Element names (unknown ones are errors), required elements and JSON
/// types of the resources a referral carries, contained ones included.
/// dom-2 (contained resources contain nothing) is checked with the invariants.
fn resource_structure(resource: &Map<String, Value>, path: &str) -> Checked {
    let kind = resource_type(resource, path)?;
    if let Some(own) = r4::elements(kind) {
        for key in resource.keys() {
            let name = key.strip_prefix('_').unwrap_or(key);
            if key == "resourceType" || r4::DOMAIN_RESOURCE.contains(&name) || own.contains(&name) {
                continue;
            }
            return Err(structure(
                &at(path, key),
                format!("not an element of {kind} in FHIR R4"),
            ));
        }
    }
    if let Some(contained) = resource.get("contained") {
        let field = at(path, "contained");
        let items = contained
            .as_array()
            .ok_or_else(|| structure(&field, "contained must be an array of resources"))?;
        for (i, item) in items.iter().enumerate() {
            let item_path = index(&field, i);
            let item = item
                .as_object()
                .ok_or_else(|| structure(&item_path, "a contained resource must be an object"))?;
            resource_structure(item, &item_path)?;
        }
    }
    match kind {
        "ServiceRequest" => service_request_structure(resource, path),
        "Patient" | "RelatedPerson" | "Practitioner" => person_structure(resource, path),
        _ => Ok(()),
    }
}

fn service_request_structure(sr: &Map<String, Value>, path: &str) -> Checked {
    for required in ["status", "intent"] {
        let field = at(path, required);
        match sr.get(required) {
            None => return Err(structure(&field, "required (1..1) in a ServiceRequest")),
            Some(Value::String(_)) => {}
            Some(_) => return Err(structure(&field, "a code must be a JSON string")),
        }
    }
    if let Some(priority) = sr.get("priority")
        && !priority.is_string()
    {
        return Err(structure(
            &at(path, "priority"),
            "a code must be a JSON string",
        ));
    }
    match sr.get("subject") {
        None => {
            return Err(structure(
                &at(path, "subject"),
                "required (1..1) in a ServiceRequest",
            ));
        }
        Some(Value::Object(subject)) => {
            if let Some(reference) = subject.get("reference")
                && !reference.is_string()
            {
                return Err(structure(
                    &at(path, "subject.reference"),
                    "a reference must be a string",
                ));
            }
        }
        Some(_) => {
            return Err(structure(
                &at(path, "subject"),
                "subject must be a Reference",
            ));
        }
    }
    for list in ["identifier", "reasonCode", "note", "contained"] {
        if let Some(value) = sr.get(list)
            && !value
                .as_array()
                .is_some_and(|a| a.iter().all(Value::is_object))
        {
            return Err(structure(&at(path, list), "must be an array of objects"));
        }
    }
    if let Some(period) = sr.get("occurrencePeriod")
        && !period.is_object()
    {
        return Err(structure(&at(path, "occurrencePeriod"), "must be a Period"));
    }
    Ok(())
}

fn person_structure(person: &Map<String, Value>, path: &str) -> Checked {
    for list in ["telecom", "name", "communication", "identifier"] {
        if let Some(value) = person.get(list)
            && !value
                .as_array()
                .is_some_and(|a| a.iter().all(Value::is_object))
        {
            return Err(structure(&at(path, list), "must be an array of objects"));
        }
    }
    Ok(())
}

fn bundle_structure(bundle: &Map<String, Value>) -> Checked {
    for key in bundle.keys() {
        let name = key.strip_prefix('_').unwrap_or(key);
        if key != "resourceType" && !r4::BUNDLE.contains(&name) {
            return Err(structure(key, "not an element of Bundle in FHIR R4"));
        }
    }
    match bundle.get("type") {
        None => return Err(structure("type", "required (1..1) in a Bundle")),
        Some(Value::String(_)) => {}
        Some(_) => return Err(structure("type", "a code must be a JSON string")),
    }
    let Some(entries) = bundle.get("entry") else {
        return Ok(());
    };
    let entries = entries
        .as_array()
        .ok_or_else(|| structure("entry", "entry must be an array"))?;
    for (i, entry) in entries.iter().enumerate() {
        let path = index("entry", i);
        let entry = entry
            .as_object()
            .ok_or_else(|| structure(&path, "an entry must be an object"))?;
        for key in entry.keys() {
            let name = key.strip_prefix('_').unwrap_or(key);
            if !r4::BUNDLE_ENTRY.contains(&name) {
                return Err(structure(
                    &at(&path, key),
                    "not an element of Bundle.entry in FHIR R4",
                ));
            }
        }
        if let Some(full_url) = entry.get("fullUrl")
            && !full_url.is_string()
        {
            return Err(structure(&at(&path, "fullUrl"), "fullUrl must be a string"));
        }
        if let Some(request) = entry.get("request") {
            let request_path = at(&path, "request");
            let request = request
                .as_object()
                .ok_or_else(|| structure(&request_path, "request must be an object"))?;
            for required in ["method", "url"] {
                if !request.get(required).is_some_and(Value::is_string) {
                    return Err(structure(
                        &at(&request_path, required),
                        "required (1..1) in Bundle.entry.request, as a string",
                    ));
                }
            }
        }
        if let Some(resource) = entry.get("resource") {
            let resource_path = at(&path, "resource");
            let resource = resource
                .as_object()
                .ok_or_else(|| structure(&resource_path, "a resource must be an object"))?;
            if resource_type(resource, &resource_path)? == "Bundle" {
                bundle_in_bundle(&resource_path)?;
            }
            resource_structure(resource, &resource_path)?;
        }
    }
    Ok(())
}

fn bundle_in_bundle(path: &str) -> Checked {
    Err(Rejection::new(
        Check::Gateway,
        at(path, "resourceType"),
        "a referral Bundle does not nest Bundles",
    ))
}

/// The entries that are objects, with their index (the structure pass
/// already refused any other).
fn entries(bundle: &Map<String, Value>) -> Vec<(usize, &Map<String, Value>)> {
    bundle
        .get("entry")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .enumerate()
                .filter_map(|(i, e)| e.as_object().map(|e| (i, e)))
                .collect()
        })
        .unwrap_or_default()
}

// ----------------------------------------------------------------- binding

fn binding(value: Option<&Value>, path: &str, codes: &[&str]) -> Checked {
    match value.and_then(Value::as_str) {
        Some(code) if !codes.contains(&code) => Err(Rejection::new(
            Check::Binding,
            path,
            format!(
                "not a code of the required value set (codes are case-sensitive): one of {}",
                codes.join(", ")
            ),
        )),
        _ => Ok(()),
    }
}

/// Required value sets of one resource and whatever it contains.
fn bindings(resource: &Map<String, Value>, path: &str) -> Checked {
    match resource.get("resourceType").and_then(Value::as_str) {
        Some("ServiceRequest") => {
            binding(
                resource.get("status"),
                &at(path, "status"),
                r4::REQUEST_STATUS,
            )?;
            binding(
                resource.get("intent"),
                &at(path, "intent"),
                r4::REQUEST_INTENT,
            )?;
            if let Some(priority) = resource.get("priority").and_then(Value::as_str)
                && Priority::parse(priority).is_none()
            {
                return Err(Rejection::new(
                    Check::Binding,
                    at(path, "priority"),
                    "not a code of request-priority (codes are case-sensitive): one of routine, urgent, asap, stat",
                ));
            }
        }
        Some("Patient" | "RelatedPerson" | "Practitioner") => {
            binding(
                resource.get("gender"),
                &at(path, "gender"),
                r4::ADMINISTRATIVE_GENDER,
            )?;
            each_object(resource, "name", path, |name, p| {
                binding(name.get("use"), &at(p, "use"), r4::NAME_USE)
            })?;
        }
        _ => {}
    }
    each_object(resource, "telecom", path, |point, p| {
        binding(
            point.get("system"),
            &at(p, "system"),
            r4::CONTACT_POINT_SYSTEM,
        )?;
        binding(point.get("use"), &at(p, "use"), r4::CONTACT_POINT_USE)
    })?;
    each_object(resource, "identifier", path, |id, p| {
        binding(id.get("use"), &at(p, "use"), r4::IDENTIFIER_USE)
    })?;
    if let Some(text) = resource.get("text").and_then(Value::as_object) {
        binding(
            text.get("status"),
            &at(path, "text.status"),
            r4::NARRATIVE_STATUS,
        )?;
    }
    each_object(resource, "contained", path, bindings)
}

fn each_object(
    resource: &Map<String, Value>,
    key: &str,
    path: &str,
    mut check: impl FnMut(&Map<String, Value>, &str) -> Checked,
) -> Checked {
    let Some(items) = resource.get(key).and_then(Value::as_array) else {
        return Ok(());
    };
    let field = at(path, key);
    for (i, item) in items.iter().enumerate() {
        if let Some(item) = item.as_object() {
            check(item, &index(&field, i))?;
        }
    }
    Ok(())
}

fn bundle_bindings(
    bundle: &Map<String, Value>,
    entries: &[(usize, &Map<String, Value>)],
) -> Checked {
    binding(bundle.get("type"), "type", r4::BUNDLE_TYPE)?;
    for (i, entry) in entries {
        if let Some(request) = entry.get("request").and_then(Value::as_object) {
            binding(
                request.get("method"),
                &format!("entry[{i}].request.method"),
                r4::HTTP_VERB,
            )?;
        }
    }
    Ok(())
}

// --------------------------------------------------------------- invariant

/// Every `reference` string in a value, with its path.
fn references<'a>(value: &'a Value, path: &str, found: &mut Vec<(String, &'a str)>) {
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                let field = at(path, key);
                if key == "reference"
                    && let Value::String(reference) = item
                {
                    found.push((field, reference));
                } else {
                    references(item, &field, found);
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                references(item, &index(path, i), found);
            }
        }
        _ => {}
    }
}

/// ref-1, dom-2, dom-3 and dom-4 for one container (a resource and what it
/// contains).
fn container_invariants(resource: &Map<String, Value>, path: &str) -> Checked {
    let contained: Vec<&Map<String, Value>> = resource
        .get("contained")
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(Value::as_object).collect())
        .unwrap_or_default();
    let ids: Vec<Option<&str>> = contained
        .iter()
        .map(|c| c.get("id").and_then(Value::as_str))
        .collect();
    let mut found = Vec::new();
    for (key, item) in resource {
        references(item, &at(path, key), &mut found);
    }
    // ref-1: a local reference points at a contained resource.
    for (field, reference) in &found {
        if let Some(local) = reference.strip_prefix('#')
            && !local.is_empty()
            && !ids.contains(&Some(local))
        {
            return Err(Rejection::new(
                Check::Invariant,
                field.as_str(),
                "ref-1: a local reference must name a contained resource's id",
            ));
        }
    }
    for (i, item) in contained.iter().enumerate() {
        let item_path = index(&at(path, "contained"), i);
        // dom-2: contained resources contain nothing.
        if item.contains_key("contained") {
            return Err(Rejection::new(
                Check::Invariant,
                at(&item_path, "contained"),
                "dom-2: a contained resource cannot contain resources",
            ));
        }
        // dom-4: no versionId or lastUpdated on a contained resource.
        if let Some(meta) = item.get("meta").and_then(Value::as_object) {
            for key in ["versionId", "lastUpdated"] {
                if meta.contains_key(key) {
                    return Err(Rejection::new(
                        Check::Invariant,
                        at(&at(&item_path, "meta"), key),
                        "dom-4: a contained resource has no meta.versionId or meta.lastUpdated",
                    ));
                }
            }
        }
        // dom-3: every contained resource is referenced, or refers to its
        // container.
        let referenced =
            ids[i].is_some_and(|id| found.iter().any(|(_, r)| r.strip_prefix('#') == Some(id)));
        let refers_back = found
            .iter()
            .any(|(field, r)| *r == "#" && field.starts_with(&format!("{item_path}.")));
        if !referenced && !refers_back {
            return Err(Rejection::new(
                Check::Invariant,
                item_path,
                "dom-3: a contained resource must be referenced from its container",
            ));
        }
    }
    Ok(())
}

/// bdl-3 (request in transaction and batch entries only), bdl-7 (unique
/// fullUrl), bdl-8 (fullUrl not version-specific), and a RESTful fullUrl
/// agreeing with the resource's type and id.
fn bundle_invariants(
    bundle: &Map<String, Value>,
    entries: &[(usize, &Map<String, Value>)],
) -> Checked {
    let kind = bundle
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let needs_request = matches!(kind, "transaction" | "batch" | "history");
    let mut seen: Vec<&str> = Vec::new();
    for (i, entry) in entries {
        let path = index("entry", *i);
        match (needs_request, entry.contains_key("request")) {
            (true, false) => {
                return Err(Rejection::new(
                    Check::Invariant,
                    at(&path, "request"),
                    "bdl-3: every entry of a transaction or batch needs a request",
                ));
            }
            (false, true) => {
                return Err(Rejection::new(
                    Check::Invariant,
                    at(&path, "request"),
                    "bdl-3: only transaction, batch and history entries carry a request",
                ));
            }
            _ => {}
        }
        let Some(full_url) = entry.get("fullUrl").and_then(Value::as_str) else {
            continue;
        };
        let field = at(&path, "fullUrl");
        if seen.contains(&full_url) {
            return Err(Rejection::new(
                Check::Invariant,
                field,
                "bdl-7: fullUrl must be unique in a Bundle",
            ));
        }
        seen.push(full_url);
        if full_url.contains("/_history/") {
            return Err(Rejection::new(
                Check::Invariant,
                field,
                "bdl-8: fullUrl cannot be version-specific",
            ));
        }
        if !full_url.starts_with("urn:")
            && let Some(resource) = entry.get("resource").and_then(Value::as_object)
            && let (Some(kind), Some(id)) = (
                resource.get("resourceType").and_then(Value::as_str),
                resource.get("id").and_then(Value::as_str),
            )
            && !full_url.ends_with(&format!("/{kind}/{id}"))
        {
            return Err(Rejection::new(
                Check::Invariant,
                field,
                "a RESTful fullUrl must end with the resource's type and id",
            ));
        }
    }
    Ok(())
}

/// Every `urn:uuid:`/`urn:oid:` reference in a Bundle names an entry.
fn bundle_references(entries: &[(usize, &Map<String, Value>)]) -> Checked {
    let full_urls: Vec<&str> = entries
        .iter()
        .filter_map(|(_, e)| e.get("fullUrl").and_then(Value::as_str))
        .collect();
    for (i, entry) in entries {
        let Some(resource) = entry.get("resource") else {
            continue;
        };
        let mut found = Vec::new();
        references(resource, &resource_path(*i), &mut found);
        for (field, reference) in found {
            if reference.starts_with("urn:") && !full_urls.contains(&reference) {
                return Err(Rejection::new(
                    Check::Reference,
                    field,
                    "the reference names no entry of the Bundle",
                ));
            }
        }
    }
    Ok(())
}

// ----------------------------------------------------------------- gateway

/// The ServiceRequest's own fields the line takes.
struct ServiceRequest<'a> {
    sr: &'a Map<String, Value>,
    priority: Priority,
}

impl<'a> ServiceRequest<'a> {
    /// The status rule: only an `active` request is acted on.
    fn read(sr: &'a Map<String, Value>, path: &str) -> Checked<Self> {
        if sr.get("status").and_then(Value::as_str) != Some("active") {
            return Err(Rejection::new(
                Check::Gateway,
                at(path, "status"),
                "only an active ServiceRequest is a referral the line acts on",
            ));
        }
        let priority = sr
            .get("priority")
            .and_then(Value::as_str)
            .and_then(Priority::parse)
            .unwrap_or_default();
        Ok(Self { sr, priority })
    }

    fn into_referral(
        self,
        patient: &Map<String, Value>,
        patient_path: &str,
        focus: Option<String>,
    ) -> Checked<Referral> {
        let phone = phone(patient, patient_path)?;
        let sr = self.sr;
        let occurrence = sr
            .get("occurrenceDateTime")
            .and_then(Value::as_str)
            .or_else(|| {
                sr.get("occurrencePeriod")
                    .and_then(|p| p.get("start"))
                    .and_then(Value::as_str)
            })
            .and_then(|s| date_time(s).ok());
        let identifier = sr
            .get("identifier")
            .and_then(Value::as_array)
            .and_then(|ids| ids.first())
            .and_then(|id| {
                Some(Identifier {
                    system: id.get("system").and_then(Value::as_str).map(str::to_owned),
                    value: id.get("value").and_then(Value::as_str)?.to_owned(),
                })
            });
        Ok(Referral {
            priority: self.priority,
            occurrence,
            patient: ReferredPatient {
                phone: Address::parse(phone.as_e164()),
                name: name(patient),
                language: language(patient),
            },
            reason: reason(sr),
            focus,
            identifier,
        })
    }
}

enum Subject<'a> {
    /// `#id`: a contained resource.
    Local(&'a str),
    /// Anything else: resolved (or not) by the caller.
    Outside,
}
use Subject::{Local, Outside};

fn subject_reference<'a>(sr: &'a Map<String, Value>, path: &str) -> Checked<Subject<'a>> {
    let reference = sr
        .get("subject")
        .and_then(|s| s.get("reference"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            Rejection::new(
                Check::Gateway,
                at(path, "subject.reference"),
                "the subject must reference the Patient in the payload",
            )
        })?;
    Ok(match reference.strip_prefix('#') {
        Some(id) if !id.is_empty() => Local(id),
        _ => Outside,
    })
}

fn contained_patient<'a>(
    container: &'a Map<String, Value>,
    path: &str,
    id: &str,
) -> Checked<(&'a Map<String, Value>, String)> {
    let found = container
        .get("contained")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .find_map(|(i, c)| {
            let c = c.as_object()?;
            (c.get("id").and_then(Value::as_str) == Some(id)).then_some((i, c))
        });
    match found {
        Some((i, patient))
            if patient.get("resourceType").and_then(Value::as_str) == Some("Patient") =>
        {
            Ok((patient, index(&at(path, "contained"), i)))
        }
        _ => Err(Rejection::new(
            Check::Gateway,
            at(path, "subject.reference"),
            "the subject must be a Patient",
        )),
    }
}

fn read_from_bundle(
    bundle: &Map<String, Value>,
    entries: &[(usize, &Map<String, Value>)],
) -> Checked<Referral> {
    if !matches!(
        bundle.get("type").and_then(Value::as_str),
        Some("transaction" | "collection")
    ) {
        return Err(Rejection::new(
            Check::Gateway,
            "type",
            "a referral Bundle is a transaction or a collection",
        ));
    }
    let Some((i, entry, sr)) = entries.iter().find_map(|(i, e)| {
        let resource = e.get("resource")?.as_object()?;
        (resource.get("resourceType").and_then(Value::as_str) == Some("ServiceRequest"))
            .then_some((*i, *e, resource))
    }) else {
        return Err(Rejection::new(
            Check::Gateway,
            "entry",
            "the Bundle holds no ServiceRequest",
        ));
    };
    let sr_path = resource_path(i);
    let request = ServiceRequest::read(sr, &sr_path)?;
    let sr_full_url = entry.get("fullUrl").and_then(Value::as_str);
    let (patient, patient_path) = match subject_reference(sr, &sr_path)? {
        Local(id) => contained_patient(sr, &sr_path, id)?,
        Outside => {
            let reference = sr
                .get("subject")
                .and_then(|s| s.get("reference"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            let wanted = resolve(reference, sr_full_url);
            let found = entries.iter().find_map(|(k, e)| {
                let url = e.get("fullUrl").and_then(Value::as_str)?;
                (Some(url) == wanted.as_deref())
                    .then(|| {
                        e.get("resource")
                            .and_then(Value::as_object)
                            .map(|r| (*k, r))
                    })
                    .flatten()
            });
            match found {
                Some((k, patient))
                    if patient.get("resourceType").and_then(Value::as_str) == Some("Patient") =>
                {
                    (patient, resource_path(k))
                }
                Some(_) => {
                    return Err(Rejection::new(
                        Check::Gateway,
                        at(&sr_path, "subject.reference"),
                        "the subject must be a Patient",
                    ));
                }
                None => {
                    return Err(Rejection::new(
                        Check::Gateway,
                        at(&sr_path, "subject.reference"),
                        "the Patient must be an entry of the Bundle: the line needs their phone",
                    ));
                }
            }
        }
    };
    let focus = sr_full_url.map(str::to_owned).or_else(|| {
        sr.get("id")
            .and_then(Value::as_str)
            .map(|id| format!("ServiceRequest/{id}"))
    });
    request.into_referral(patient, &patient_path, focus)
}

/// The fullUrl a reference from an entry names: itself when absolute (or
/// a `urn:`), else resolved against the base of the referring entry's
/// RESTful fullUrl.
fn resolve(reference: &str, from: Option<&str>) -> Option<String> {
    if reference.starts_with("urn:") || reference.contains("://") {
        return Some(reference.to_owned());
    }
    let from = from.filter(|f| !f.starts_with("urn:"))?;
    // `https://host/fhir/ServiceRequest/sr-1` → `https://host/fhir`.
    let mut parts = from.rsplitn(3, '/');
    let (_id, _kind, base) = (parts.next()?, parts.next()?, parts.next()?);
    Some(format!("{base}/{reference}"))
}

/// The phone the line texts: `telecom` with system phone or sms and a
/// value, a mobile one first, as an international (E.164) number. Spaces,
/// dashes, dots and brackets around the digits are dropped (`+1 (555)
/// 010-0188`); a number without its country code cannot be texted safely
/// (which country?), so it is refused at its path rather than guessed.
fn phone(patient: &Map<String, Value>, patient_path: &str) -> Checked<PhoneNumber> {
    let telecom = at(patient_path, "telecom");
    let points: Vec<(usize, &Map<String, Value>, &str)> = patient
        .get("telecom")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, p)| {
            let p = p.as_object()?;
            let value = p.get("value").and_then(Value::as_str)?;
            (matches!(
                p.get("system").and_then(Value::as_str),
                Some("phone" | "sms")
            ) && !value.trim().is_empty())
            .then_some((i, p, value))
        })
        .collect();
    if points.is_empty() {
        return Err(Rejection::new(
            Check::Gateway,
            telecom,
            "the Patient needs a telecom with system phone or sms and a value: the line reaches people by text",
        ));
    }
    let rank = |p: &Map<String, Value>| match p.get("use").and_then(Value::as_str) {
        Some("mobile") => 0,
        Some("old") => 2,
        _ => 1,
    };
    let mut ordered = points.clone();
    ordered.sort_by_key(|(i, p, _)| (rank(p), *i));
    for (_, _, value) in &ordered {
        let digits: String = value
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
            .collect();
        if let Ok(number) = PhoneNumber::parse(&digits) {
            return Ok(number);
        }
    }
    let (first, _, _) = ordered[0];
    Err(Rejection::new(
        Check::Gateway,
        format!("{}.value", index(&telecom, first)),
        "the phone must be an international number (E.164: + and the country code)",
    ))
}

/// `Patient.name` as text: its `text`, else given names and family.
fn name(patient: &Map<String, Value>) -> Option<String> {
    let names = patient.get("name")?.as_array()?;
    names.iter().filter_map(Value::as_object).find_map(|n| {
        if let Some(text) = n.get("text").and_then(Value::as_str) {
            return Some(text.to_owned());
        }
        let mut parts: Vec<&str> = n
            .get("given")
            .and_then(Value::as_array)
            .map(|g| g.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(family) = n.get("family").and_then(Value::as_str) {
            parts.push(family);
        }
        (!parts.is_empty()).then(|| parts.join(" "))
    })
}

/// `Patient.communication`, preferred first, when the line speaks it.
fn language(patient: &Map<String, Value>) -> Option<Language> {
    let mut communications: Vec<&Map<String, Value>> = patient
        .get("communication")?
        .as_array()?
        .iter()
        .filter_map(Value::as_object)
        .collect();
    communications.sort_by_key(|c| c.get("preferred").and_then(Value::as_bool) != Some(true));
    communications.iter().find_map(|c| {
        c.get("language")?
            .get("coding")?
            .as_array()?
            .iter()
            .filter(|coding| {
                coding.get("system").and_then(Value::as_str) == Some("urn:ietf:bcp:47")
            })
            .find_map(|coding| {
                let code = coding.get("code")?.as_str()?;
                let primary = code.split('-').next()?.to_ascii_lowercase();
                match primary.as_str() {
                    "en" => Some(Language::En),
                    "es" => Some(Language::Es),
                    _ => None,
                }
            })
    })
}

/// `reasonCode` (text, else the first display) and `note` texts.
fn reason(sr: &Map<String, Value>) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for code in sr
        .get("reasonCode")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let text = code.get("text").and_then(Value::as_str).or_else(|| {
            code.get("coding")?
                .as_array()?
                .iter()
                .find_map(|c| c.get("display")?.as_str())
        });
        if let Some(text) = text {
            parts.push(text.to_owned());
        }
    }
    for note in sr
        .get("note")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(text) = note.get("text").and_then(Value::as_str) {
            parts.push(text.to_owned());
        }
    }
    (!parts.is_empty()).then(|| parts.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_times_need_a_timezone_when_they_have_a_time() {
        assert!(date_time("2036-01-15T09:00:00-05:00").is_ok());
        assert!(date_time("2036-01-15T09:00:00Z").is_ok());
        assert!(date_time("2036-01-15T09:00:00").is_err());
        assert!(date_time("2036-01-15").is_ok());
        assert!(date_time("2036-01").is_ok());
        assert!(date_time("2036").is_ok());
        assert!(date_time("2036-13-01").is_err());
        assert!(date_time("36-01-01").is_err());
        assert!(date_time("2036-01-15-01").is_err());
    }

    #[test]
    fn nulls_only_hold_places_in_primitive_extension_arrays() {
        let ok = serde_json::json!({"given": ["A", "B"], "_given": [null, {"id": "x"}]});
        assert!(primitives(&ok, "name[0]").is_ok());
        let all_null = serde_json::json!({"_given": [null, null]});
        assert!(primitives(&all_null, "").is_err());
        let elsewhere = serde_json::json!({"given": [null, "B"]});
        assert_eq!(
            primitives(&elsewhere, "name[0]")
                .unwrap_err()
                .path
                .as_deref(),
            Some("name[0].given[0]")
        );
    }

    #[test]
    fn relative_references_resolve_against_the_entry_base() {
        assert_eq!(
            resolve(
                "Patient/pt-1",
                Some("https://h.example.org/fhir/ServiceRequest/sr-1")
            )
            .as_deref(),
            Some("https://h.example.org/fhir/Patient/pt-1")
        );
        assert_eq!(resolve("Patient/pt-1", Some("urn:uuid:1")), None);
        assert_eq!(resolve("urn:uuid:2", None).as_deref(), Some("urn:uuid:2"));
    }
}
