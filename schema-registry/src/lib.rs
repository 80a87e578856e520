//! Schema registry: a pure compatibility checker, storage backends and a REST server.
