"""The pure semantics below every feature and store: value types, rate-limit algorithms and
the stored form of a response. Imports nothing from bastion but itself, `bastion.typing` and
`bastion.exceptions`, so stores can use it without reaching up into the middleware."""
