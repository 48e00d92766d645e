//! Completion notices pushed to callback addresses. A thread of their own
//! sends them, so an unreachable address delays only other notices, never a
//! task or a worker.

use std::collections::HashMap;
use std::sync::mpsc::{self, Sender};
use std::time::Duration;

use nng::options::{Options, ReconnectMaxTime, SendTimeout};
use nng::{Protocol, Socket};
use tracing::{debug, warn};

use crate::protocol::{encode_message, Notice};

/// How long one notice may wait for its address to accept it.
const SEND_LIMIT: Duration = Duration::from_secs(1);

/// Sockets kept open to recent callback addresses.
const OPEN_SOCKETS: usize = 64;

/// The queue of notices to push.
pub(crate) struct Callbacks {
    queue: Sender<(String, Notice)>,
}

impl Callbacks {
    /// Starts the sending thread.
    pub(crate) fn start() -> Callbacks {
        let (queue, notices) = mpsc::channel::<(String, Notice)>();
        std::thread::Builder::new()
            .name("callbacks".into())
            .spawn(move || {
                let mut sockets: HashMap<String, Socket> = HashMap::new();
                for (address, notice) in notices {
                    deliver(&mut sockets, &address, &notice);
                }
            })
            .expect("spawning the callback thread");
        Callbacks { queue }
    }

    /// Queues a notice for `address`.
    pub(crate) fn push(&self, address: String, notice: Notice) {
        let _ = self.queue.send((address, notice));
    }
}

fn deliver(sockets: &mut HashMap<String, Socket>, address: &str, notice: &Notice) {
    let task_id = notice.report.task_id;
    if !sockets.contains_key(address) {
        if sockets.len() >= OPEN_SOCKETS {
            sockets.clear();
        }
        match open(address) {
            Ok(socket) => {
                sockets.insert(address.to_string(), socket);
            }
            Err(error) => return warn!(%task_id, %address, %error, "callback address unusable; notice dropped"),
        }
    }
    match sockets[address].send(encode_message(notice)) {
        Ok(()) => debug!(%task_id, %address, "callback notice sent"),
        Err((_, error)) => {
            warn!(%task_id, %address, %error, "callback notice not delivered within {} s; dropped", SEND_LIMIT.as_secs())
        }
    }
}

fn open(address: &str) -> Result<Socket, nng::Error> {
    let socket = Socket::new(Protocol::Push0)?;
    socket.set_opt::<SendTimeout>(Some(SEND_LIMIT))?;
    socket.set_opt::<ReconnectMaxTime>(Some(Duration::from_secs(1)))?;
    crate::tls::dial_async(&socket, address)?;
    Ok(socket)
}
