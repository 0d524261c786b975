//! Everything between lb and a backend below the proxy's logic: opening connections (TCP, an
//! optional PROXY header, optional TLS: [`connect`]), lb's own HTTP/1.1 client for bodiless
//! requests ([`h1_client`]), the idle keep-alive connections of each backend ([`idle`]), and the
//! request body sent upstream ([`body`]).

pub mod body;
pub mod connect;
pub mod h1_client;
pub mod idle;

pub use body::{ClientBody, ClientBodyError, UpBody};
pub use connect::{open, BackendStream, OpenError, Preface};
pub use idle::{connect, connect_own, ConnPool, ConnectError, Sender};
