//! forge-sim: a Forge (AUTOMATIC1111 API) simulator. Being written.
