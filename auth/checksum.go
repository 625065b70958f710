package auth

import (
	"hash/crc32"
	"strings"
)

// Keys carry a checksum so that a leaked key can be recognised offline,
// without the server or its signing key (as GitHub's tokens do): a key is
//
//	msb_<JWT>_<checksum>
//
// where <checksum> is the CRC-32 (IEEE) of "msb_<JWT>", written as 6 base62
// characters (0-9, A-Z, a-z), most significant first. Secret scanners match
// msb_[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}_[0-9A-Za-z]{6} and
// confirm a hit with ValidChecksum. Keys issued before the checksum (plain
// "msb_<JWT>") are still accepted.

// ChecksumLen is the length of a key's checksum, after its last "_".
const ChecksumLen = 6

// sigLen is the length of an HS256 signature in unpadded base64url.
const sigLen = 43

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// checksum returns the 6-character checksum of body ("msb_<JWT>").
func checksum(body string) string {
	n := crc32.ChecksumIEEE([]byte(body))
	var out [ChecksumLen]byte
	for i := ChecksumLen - 1; i >= 0; i-- {
		out[i] = base62[n%62]
		n /= 62
	}
	return string(out[:])
}

// withChecksum appends the checksum to "msb_<JWT>".
func withChecksum(body string) string { return body + "_" + checksum(body) }

// splitKey returns the JWT inside key and whether key is in the checksummed
// format. ok is false for a checksummed key whose checksum does not match.
// Keys from before the checksum are recognised by their signature part,
// which is then exactly an HS256 signature (43 characters) long.
func splitKey(key string) (jwt string, checksummed, ok bool) {
	if !strings.HasPrefix(key, Prefix) {
		return "", false, false
	}
	dot := strings.LastIndexByte(key, '.')
	if dot < 0 {
		return key[len(Prefix):], false, true // not a JWT: the parser refuses it
	}
	last := key[dot+1:]
	if len(last) != sigLen+1+ChecksumLen || last[sigLen] != '_' {
		return key[len(Prefix):], false, true
	}
	body, sum := key[:len(key)-ChecksumLen-1], key[len(key)-ChecksumLen:]
	if checksum(body) != sum {
		return "", true, false
	}
	return body[len(Prefix):], true, true
}

// ValidChecksum reports whether s is an msb key in the checksummed format
// whose checksum matches. It needs no server and no secret: a scanner that
// finds msb_... text can tell a real key from a look-alike or a corrupted
// copy. It says nothing about whether the key is still valid.
func ValidChecksum(s string) bool {
	_, checksummed, ok := splitKey(s)
	return checksummed && ok
}

// LooksLikeKey reports whether s has the shape of an msb key: the prefix and
// three base64url parts, with a matching checksum when it has one (keys from
// before the checksum have none). Like ValidChecksum it works offline.
func LooksLikeKey(s string) bool {
	jwt, _, ok := splitKey(s)
	if !ok || len(s) > maxKeyLen {
		return false
	}
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 || len(parts[2]) != sigLen {
		return false
	}
	for _, p := range parts {
		if p == "" {
			return false
		}
		for i := 0; i < len(p); i++ {
			c := p[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}
