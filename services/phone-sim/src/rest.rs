//! The fake Twilio REST API: `POST …/Messages.json` creates a message (basic
//! auth, Twilio's error bodies and magic test numbers), then marks it sent
//! and delivered with signed status callbacks; `GET …/Messages.json` lists
//! messages newest first, filtered by `To`, `From` and `DateSent`, in
//! Twilio's paging shape. Like Twilio, a repeated create is a second
//! message: the REST API has no idempotency key.

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use nwd_proto::Address;
use nwd_twilio::rest::{self, MessageFilter, MessagePage, codes};
use nwd_twilio::{ErrorResponse, MessageResource, StatusCallbackForm, form};
use time::OffsetDateTime;

use crate::{
    CALLBACK_RETRY_DELAYS_MS, ConversationEntry, DELIVERY_DELAY, OutboundRecord, Sender, Sim,
    Trouble, post_signed,
};

fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    let body = ErrorResponse::new(code, status.as_u16(), message);
    let mut res = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"Twilio API\""),
        );
    }
    res
}

fn authorized(headers: &HeaderMap, account_sid: &str, token: &str) -> bool {
    let Some(encoded) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let Ok(text) = String::from_utf8(decoded) else {
        return false;
    };
    text.split_once(':')
        .is_some_and(|(user, pass)| user == account_sid && pass == token)
}

/// Error codes of Twilio's magic test numbers.
fn magic_number_error(to: &str) -> Option<(u32, &'static str)> {
    match to {
        "+15005550001" => Some((
            codes::INVALID_TO,
            "The 'To' number is not a valid phone number.",
        )),
        "+15005550002" => Some((
            codes::NOT_REACHABLE,
            "The 'To' phone number is not currently reachable via SMS.",
        )),
        "+15005550003" => Some((
            codes::REGION_NOT_ENABLED,
            "Permission to send an SMS has not been enabled for the region indicated by the 'To' number.",
        )),
        "+15005550004" => Some((
            codes::UNSUBSCRIBED,
            "Attempt to send to unsubscribed recipient.",
        )),
        "+15005550009" => Some((codes::NOT_MOBILE, "The 'To' number is not a mobile number.")),
        _ => None,
    }
}

pub(crate) async fn create_message(
    State(sim): State<Sim>,
    Path(account_sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sim.store().calls.create += 1;
    if let Some(refused) = account_refusal(&sim, &headers, &account_sid) {
        return refused;
    }
    let config = sim.config();
    let delay = match sim.take_trouble() {
        Some(Trouble::Fail { status, code }) => {
            let code = code.unwrap_or(match status.as_u16() {
                429 => codes::TOO_MANY_REQUESTS,
                503 => codes::SERVICE_UNAVAILABLE,
                _ => codes::INTERNAL_ERROR,
            });
            return twilio_error(status, code, "Simulated failure (phone-sim fail-next)");
        }
        Some(Trouble::Slow(delay)) => Some(delay),
        None => None,
    };
    // Recorded for inspection only: Twilio's REST API ignores it.
    let token = headers
        .get(nwd_twilio::IDEMPOTENCY_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
        .map(str::to_owned);

    let params = form::decode(&body);
    let field = |name: &str| form::get(&params, name).filter(|v| !v.is_empty());
    let Some(to) = field("To") else {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            codes::TO_REQUIRED,
            "A 'To' phone number is required.",
        );
    };
    if !is_number_address(to) {
        let message = format!("The 'To' number {to} is not a valid phone number.");
        return twilio_error(StatusCode::BAD_REQUEST, codes::INVALID_TO, &message);
    }
    if let Some((code, message)) = magic_number_error(to) {
        return twilio_error(StatusCode::BAD_REQUEST, code, message);
    }
    let messaging_service_sid = field("MessagingServiceSid").map(str::to_owned);
    let from = match (field("From"), &messaging_service_sid) {
        (Some(from), _) => {
            if !is_number_address(from) {
                let message = format!("The 'From' number {from} is not a valid phone number.");
                return twilio_error(StatusCode::BAD_REQUEST, codes::INVALID_FROM, &message);
            }
            from.to_owned()
        }
        // A Messaging Service picks a number from its pool: the first line.
        (None, Some(_)) => config.lines.first().cloned().unwrap_or_default(),
        (None, None) => {
            return twilio_error(
                StatusCode::BAD_REQUEST,
                codes::FROM_REQUIRED,
                "A 'From' phone number is required.",
            );
        }
    };
    let Some(body) = form::get(&params, "Body").filter(|b| !b.trim().is_empty()) else {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            codes::BODY_REQUIRED,
            "Message body is required.",
        );
    };
    if body.chars().count() > nwd_proto::events::MAX_SMS_BODY_CHARS {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21617,
            "The concatenated message body exceeds the 1600 character limit.",
        );
    }
    let status_callback = field("StatusCallback").map(str::to_owned);

    let now = OffsetDateTime::now_utc();
    let sid = nwd_twilio::new_message_sid();
    let date = rest::rfc2822(now);
    let resource = MessageResource {
        account_sid: config.account_sid.clone(),
        api_version: nwd_twilio::API_VERSION.to_owned(),
        body: body.to_owned(),
        date_created: Some(date.clone()),
        date_sent: None,
        date_updated: Some(date),
        direction: "outbound-api".to_owned(),
        error_code: None,
        error_message: None,
        from: Some(from.clone()),
        messaging_service_sid: messaging_service_sid.clone(),
        num_media: "0".to_owned(),
        num_segments: rest::num_segments(body).to_string(),
        price: None,
        price_unit: Some("USD".to_owned()),
        sid: sid.clone(),
        status: "queued".to_owned(),
        subresource_uris: Some(BTreeMap::from([(
            "media".to_owned(),
            rest::message_uri(&config.account_sid, &sid).replace(".json", "/Media.json"),
        )])),
        to: to.to_owned(),
        uri: rest::message_uri(&config.account_sid, &sid),
    };
    let record = OutboundRecord {
        sid: sid.clone(),
        to: to.to_owned(),
        from: from.clone(),
        body: body.to_owned(),
        messaging_service_sid,
        status_callback: status_callback.clone(),
        idempotency_token: token.clone(),
        status: "queued".to_owned(),
        resource: Some(resource.clone()),
    };
    {
        let mut store = sim.store();
        store.outbound.push(record.clone());
        store
            .conversations
            .entry(to.to_owned())
            .or_default()
            .push(ConversationEntry {
                sid: sid.clone(),
                sender: Sender::Line,
                line: from,
                body: body.to_owned(),
                state: "queued".to_owned(),
                at: now,
            });
    }
    tracing::info!(message_sid = %sid, "message queued");
    let bg = sim.clone();
    sim.inner
        .tasks
        .spawn(async move { deliver(bg, record).await });
    if let Some(delay) = delay {
        // Created and on its way, but the answer comes late: the caller may
        // time out and never learn the SID.
        tokio::select! {
            () = sim.inner.stop.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }
    (StatusCode::CREATED, axum::Json(resource)).into_response()
}

/// `GET /2010-04-01/Accounts/{AccountSid}/Messages.json?To=…&From=…&DateSent=YYYY-MM-DD&PageSize=…&Page=…`
pub(crate) async fn list_messages(
    State(sim): State<Sim>,
    Path(account_sid): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    sim.store().calls.list += 1;
    if let Some(refused) = account_refusal(&sim, &headers, &account_sid) {
        return refused;
    }
    let pairs = form::decode(query.as_deref().unwrap_or_default().as_bytes());
    let (filter, page) = match MessageFilter::parse(&pairs) {
        Ok(parsed) => parsed,
        Err(e) => {
            return twilio_error(
                StatusCode::BAD_REQUEST,
                codes::INVALID_PARAMETER,
                &e.to_string(),
            );
        }
    };
    let matching: Vec<MessageResource> = sim
        .store()
        .outbound
        .iter()
        .rev() // newest first, as Twilio lists
        .filter_map(|r| r.resource.clone())
        .filter(|m| filter.matches(m))
        .collect();
    axum::Json(page_of(&account_sid, &filter, page, &matching)).into_response()
}

/// Page `page` of `matching`, with Twilio's paging fields.
fn page_of(
    account_sid: &str,
    filter: &MessageFilter,
    page: u64,
    matching: &[MessageResource],
) -> MessagePage {
    let size = filter.page_size.unwrap_or(rest::DEFAULT_PAGE_SIZE);
    let start = page.saturating_mul(u64::from(size));
    let messages: Vec<MessageResource> = matching
        .iter()
        .skip(usize::try_from(start).unwrap_or(usize::MAX))
        .take(size as usize)
        .cloned()
        .collect();
    let filter = MessageFilter {
        page_size: Some(size),
        ..filter.clone()
    };
    let uri = |page: u64, token: Option<&str>| {
        let mut q: form::Params = filter
            .query()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        q.push(("Page".to_owned(), page.to_string()));
        if let Some(token) = token {
            q.push(("PageToken".to_owned(), token.to_owned()));
        }
        format!("{}?{}", rest::messages_path(account_sid), form::encode(&q))
    };
    let more = (start as usize).saturating_add(messages.len()) < matching.len();
    let next_page_uri = match messages.last() {
        Some(last) if more => Some(uri(page + 1, Some(&format!("PA{}", last.sid)))),
        _ => None,
    };
    MessagePage {
        end: (start + messages.len() as u64).saturating_sub(1),
        first_page_uri: uri(0, None),
        next_page_uri,
        page,
        page_size: u64::from(size),
        previous_page_uri: page.checked_sub(1).map(|p| uri(p, None)),
        start,
        uri: uri(page, None),
        messages,
    }
}

/// Twilio's refusal of a request without basic auth by the account's token,
/// or for another account; `None` when the request may proceed.
fn account_refusal(sim: &Sim, headers: &HeaderMap, account_sid: &str) -> Option<Response> {
    let config = sim.config();
    if !authorized(headers, &config.account_sid, config.auth_token.expose()) {
        return Some(twilio_error(
            StatusCode::UNAUTHORIZED,
            codes::AUTHENTICATION_FAILED,
            "Authentication Error - invalid username",
        ));
    }
    if account_sid != config.account_sid {
        return Some(twilio_error(
            StatusCode::NOT_FOUND,
            codes::NOT_FOUND,
            "The requested resource was not found",
        ));
    }
    None
}

/// Marks the message sent then delivered, posting a signed status callback
/// for each when the message has a `StatusCallback`.
async fn deliver(sim: Sim, record: OutboundRecord) {
    for status in ["sent", "delivered"] {
        tokio::select! {
            () = sim.inner.stop.cancelled() => return,
            () = tokio::time::sleep(DELIVERY_DELAY) => {}
        }
        sim.set_outbound_status(&record.sid, status);
        let Some(url) = &record.status_callback else {
            continue;
        };
        let form = StatusCallbackForm::new(
            &record.sid,
            status,
            &sim.config().account_sid,
            &record.from,
            &record.to,
        );
        let outcome = post_signed(&sim, url, &form.params(), &CALLBACK_RETRY_DELAYS_MS).await;
        tracing::info!(message_sid = %record.sid, status, ?outcome, "status callback");
    }
}

/// A phone number, or a channel address of one (`whatsapp:+1…`), as
/// Twilio's Messages API takes them.
pub(crate) fn is_number_address(s: &str) -> bool {
    Address::parse(s).phone().is_some()
}
