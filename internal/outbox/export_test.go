package outbox

// ReadStatsUpTo is ReadStats counting up to exactUpTo rows in each table.
var ReadStatsUpTo = readStats
