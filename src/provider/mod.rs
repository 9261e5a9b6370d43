//! Hosting-provider APIs the provision workflow calls to rebuild a server.
//!
//! Only Time4VPS today ([`time4vps`]). A provider client does HTTP and
//! nothing else: it knows no jobs, no `servers` rows and no SSH; the workflow
//! decides when to call it and turns its errors into `provider_error`.

pub mod time4vps;
