package inbox

// ConflictRetries is conflictRetries, for the tests.
const ConflictRetries = conflictRetries
