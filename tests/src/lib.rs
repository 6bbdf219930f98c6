//! Test harness for crt integration tests.
