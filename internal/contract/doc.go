// Package contract holds the tests that pin ordermesh's protobuf contracts:
// every protovalidate rule accepts what it should and rejects what it
// should, and every event declares a unique routing key. It has no runtime
// code; the contracts themselves live in proto/ and gen/.
package contract
