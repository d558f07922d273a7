//! A minimal Socket.IO v4 client over one WebSocket (Engine.IO 4, default namespace, text
//! packets only), just what the load generator needs: the handshake with `auth`, events,
//! acknowledgements and the heartbeat.
//!
//! Why not a Socket.IO client library: the Rust ones start a runtime or a thread per client
//! and buffer generously; one small task per connection lets one process hold 10,000 sockets
//! on a 2-core machine, and timestamps every frame the moment it is read.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::Error;

/// An event the server sent, stamped when its frame was read.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub name: String,
    pub data: Value,
    pub at: Instant,
}

/// An acknowledgement: the first argument of the server's ack, and when it arrived.
#[derive(Debug, Clone)]
pub struct Ack {
    pub data: Value,
    pub at: Instant,
}

/// `presence:update` is broadcast to every socket and would swamp the event queues of 10,000
/// clients, so the reader counts it instead of queueing it, and only "observer" clients keep
/// the statuses (one map per observer, not one per client).
#[derive(Debug, Default)]
pub struct Presence {
    pub updates: AtomicU64,
    /// userId -> latest status, for observers only.
    pub statuses: Option<Mutex<HashMap<i64, String>>>,
}

impl Presence {
    /// How many users this observer last saw with `status`.
    pub fn count(&self, status: &str) -> usize {
        self.statuses.as_ref().map_or(0, |map| {
            map.lock()
                .expect("the presence map is never poisoned: no code panics holding it")
                .values()
                .filter(|s| *s == status)
                .count()
        })
    }

    pub fn status_of(&self, user: i64) -> Option<String> {
        self.statuses.as_ref().and_then(|map| {
            map.lock()
                .expect("the presence map is never poisoned: no code panics holding it")
                .get(&user)
                .cloned()
        })
    }
}

type AckMap = Arc<Mutex<HashMap<u64, oneshot::Sender<Ack>>>>;

/// One connected socket.
pub struct Client {
    outgoing: mpsc::UnboundedSender<Message>,
    acks: AckMap,
    next_ack: u64,
    events: mpsc::UnboundedReceiver<Incoming>,
    pub presence: Arc<Presence>,
}

/// Small buffers: the load generator's own memory must not limit how many sockets it holds.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(16 << 20))
}

impl Client {
    /// Opens the WebSocket, does the Engine.IO and Socket.IO handshakes with `{ token,
    /// deviceId }`, and returns once the namespace is joined (`40`). The `session` event
    /// follows; read it with [`Client::expect`].
    pub async fn connect(
        address: SocketAddr,
        token: &str,
        device_id: &str,
        observe_presence: bool,
    ) -> Result<Client, Error> {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|source| Error::Connect { address, source })?;
        stream
            .set_nodelay(true)
            .map_err(|source| Error::Connect { address, source })?;
        let url = format!("ws://{address}/socket.io/?EIO=4&transport=websocket");
        let (mut ws, _response) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config()))
                .await
                .map_err(|e| Error::Handshake(format!("{address}: {e}")))?;

        // Engine.IO open packet: `0{"sid":..,"pingInterval":..}`.
        let open = next_text(&mut ws).await?;
        if !open.starts_with('0') {
            return Err(Error::Protocol(format!(
                "expected the Engine.IO open packet, got {open:?}"
            )));
        }
        let auth = json!({ "token": token, "deviceId": device_id });
        ws.send(Message::text(format!("40{auth}")))
            .await
            .map_err(|e| Error::Protocol(format!("sending the connect packet: {e}")))?;
        loop {
            let text = next_text(&mut ws).await?;
            if text == "2" {
                ws.send(Message::text("3"))
                    .await
                    .map_err(|e| Error::Protocol(format!("sending pong: {e}")))?;
            } else if text.starts_with("40") {
                break;
            } else if let Some(data) = text.strip_prefix("44") {
                return Err(Error::Refused(data.to_owned()));
            } else {
                return Err(Error::Protocol(format!(
                    "expected the namespace connect reply, got {text:?}"
                )));
            }
        }

        let (outgoing, outgoing_rx) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        let acks: AckMap = Arc::default();
        let presence = Arc::new(Presence {
            updates: AtomicU64::new(0),
            statuses: observe_presence.then(Default::default),
        });
        tokio::spawn(run(
            ws,
            outgoing_rx,
            events_tx,
            acks.clone(),
            presence.clone(),
        ));
        Ok(Client {
            outgoing,
            acks,
            next_ack: 0,
            events,
            presence,
        })
    }

    /// Emits an event without an acknowledgement; returns when it was handed to the writer.
    pub fn emit(&self, name: &str, data: &Value) -> Result<Instant, Error> {
        let packet = format!("42{}", json!([name, data]));
        let sent = Instant::now();
        self.outgoing
            .send(Message::text(packet))
            .map_err(|_| Error::Closed)?;
        Ok(sent)
    }

    /// Emits an event asking for an acknowledgement.
    pub fn emit_with_ack(
        &mut self,
        name: &str,
        data: &Value,
    ) -> Result<(Instant, oneshot::Receiver<Ack>), Error> {
        self.next_ack += 1;
        let id = self.next_ack;
        let (tx, rx) = oneshot::channel();
        self.acks
            .lock()
            .expect("the ack map is never poisoned: no code panics holding it")
            .insert(id, tx);
        let packet = format!("42{id}{}", json!([name, data]));
        let sent = Instant::now();
        self.outgoing
            .send(Message::text(packet))
            .map_err(|_| Error::Closed)?;
        Ok((sent, rx))
    }

    /// The next queued event, whatever it is.
    pub async fn next_event(&mut self, within: Duration) -> Result<Incoming, Error> {
        match tokio::time::timeout(within, self.events.recv()).await {
            Ok(Some(event)) => Ok(event),
            Ok(None) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout("the next event".into())),
        }
    }

    /// The next event, which must be `name`: anything else is a misrouted or unexpected event.
    pub async fn expect(&mut self, name: &str, within: Duration) -> Result<Incoming, Error> {
        match tokio::time::timeout(within, self.events.recv()).await {
            Ok(Some(event)) if event.name == name => Ok(event),
            Ok(Some(event)) => Err(Error::Unexpected(format!(
                "expected {name}, got {} {}",
                event.name, event.data
            ))),
            Ok(None) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout(name.to_owned())),
        }
    }

    /// An event already queued, if any (to prove nothing unexpected arrived).
    pub fn try_next_event(&mut self) -> Option<Incoming> {
        self.events.try_recv().ok()
    }
}

/// Waits for an acknowledgement and checks it says `ok: true`.
pub async fn ack_ok(
    event: &str,
    ack: oneshot::Receiver<Ack>,
    within: Duration,
) -> Result<Ack, Error> {
    match tokio::time::timeout(within, ack).await {
        Ok(Ok(ack)) if ack.data.get("ok") == Some(&Value::Bool(true)) => Ok(ack),
        Ok(Ok(ack)) => Err(Error::Unexpected(format!("{event} refused: {}", ack.data))),
        Ok(Err(_)) => Err(Error::Closed),
        Err(_) => Err(Error::Timeout(format!("the ack of {event}"))),
    }
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn next_text(ws: &mut Ws) -> Result<String, Error> {
    let within = Duration::from_secs(30);
    loop {
        match tokio::time::timeout(within, ws.next()).await {
            Err(_) => return Err(Error::Timeout("the Socket.IO handshake".into())),
            Ok(None) => return Err(Error::Closed),
            Ok(Some(Err(e))) => return Err(Error::Protocol(format!("reading: {e}"))),
            Ok(Some(Ok(Message::Text(text)))) => return Ok(text.as_str().to_owned()),
            Ok(Some(Ok(Message::Close(_)))) => return Err(Error::Closed),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// The connection task: writes what the client emits, answers pings, and sorts what arrives
/// into acks, presence counts and the event queue. It ends when the server closes or the
/// [`Client`] is dropped; then the queue ends with a synthetic `disconnect` event.
async fn run(
    mut ws: Ws,
    mut outgoing: mpsc::UnboundedReceiver<Message>,
    events: mpsc::UnboundedSender<Incoming>,
    acks: AckMap,
    presence: Arc<Presence>,
) {
    let reason = loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let at = Instant::now();
                    if let Err(reason) = handle_text(text.as_str(), at, &mut ws, &events, &acks, &presence).await {
                        break reason;
                    }
                }
                Some(Ok(Message::Close(_))) | None => break "closed by the server".to_owned(),
                Some(Ok(_)) => {}
                Some(Err(e)) => break format!("read error: {e}"),
            },
            message = outgoing.recv() => match message {
                Some(message) => {
                    if let Err(e) = ws.send(message).await {
                        break format!("write error: {e}");
                    }
                }
                None => {
                    // The client was dropped: leave politely so the server sees a clean close.
                    let _ = ws.send(Message::text("41")).await;
                    let _ = ws.close(None).await;
                    return;
                }
            },
        }
    };
    let _ = events.send(Incoming {
        name: "disconnect".into(),
        data: Value::String(reason),
        at: Instant::now(),
    });
}

async fn handle_text(
    text: &str,
    at: Instant,
    ws: &mut Ws,
    events: &mpsc::UnboundedSender<Incoming>,
    acks: &AckMap,
    presence: &Presence,
) -> Result<(), String> {
    if text == "2" {
        return ws
            .send(Message::text("3"))
            .await
            .map_err(|e| format!("write error: {e}"));
    }
    if let Some(rest) = text.strip_prefix("42") {
        let body = rest.trim_start_matches(|c: char| c.is_ascii_digit());
        if body.starts_with("[\"presence:update\"") {
            presence.updates.fetch_add(1, Ordering::Relaxed);
            if let Some(map) = &presence.statuses {
                let changes = parse_array(body)?;
                let changes = changes
                    .get(1)
                    .and_then(|d| d.get("changes"))
                    .and_then(Value::as_array)
                    .ok_or_else(|| format!("presence:update without changes: {body}"))?;
                let mut map = map
                    .lock()
                    .expect("the presence map is never poisoned: no code panics holding it");
                for change in changes {
                    let (Some(user), Some(status)) = (
                        change.get("userId").and_then(Value::as_i64),
                        change.get("status").and_then(Value::as_str),
                    ) else {
                        return Err(format!("malformed presence change: {change}"));
                    };
                    map.insert(user, status.to_owned());
                }
            }
            return Ok(());
        }
        let mut array = parse_array(body)?;
        let data = if array.len() > 1 {
            array.swap_remove(1)
        } else {
            Value::Null
        };
        let name = match array.first() {
            Some(Value::String(name)) => name.clone(),
            _ => return Err(format!("event without a name: {text}")),
        };
        let _ = events.send(Incoming { name, data, at });
        return Ok(());
    }
    if let Some(rest) = text.strip_prefix("43") {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let id: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("ack without an id: {text}"))?;
        let mut array = parse_array(&rest[digits..])?;
        let data = if array.is_empty() {
            Value::Null
        } else {
            array.swap_remove(0)
        };
        let waiter = acks
            .lock()
            .expect("the ack map is never poisoned: no code panics holding it")
            .remove(&id);
        match waiter {
            Some(waiter) => {
                let _ = waiter.send(Ack { data, at });
            }
            None => {
                let _ = events.send(Incoming {
                    name: "unexpected-ack".into(),
                    data: Value::String(text.to_owned()),
                    at,
                });
            }
        }
        return Ok(());
    }
    if text == "41" || text == "1" {
        return Err("disconnected by the server".into());
    }
    if text == "3" || text == "6" {
        return Ok(());
    }
    // Anything else (binary attachments, other namespaces) is not part of Parley's protocol.
    let _ = events.send(Incoming {
        name: "unexpected-packet".into(),
        data: Value::String(text.to_owned()),
        at,
    });
    Ok(())
}

fn parse_array(body: &str) -> Result<Vec<Value>, String> {
    serde_json::from_str(body).map_err(|e| format!("bad packet {body:?}: {e}"))
}
