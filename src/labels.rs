//! The label model: the required labels (`git-url`, `git-sha`, `email-ids`), the OCI labels,
//! validation for `verify`, and capping of untrusted values.
