//! crt-plugin-api
