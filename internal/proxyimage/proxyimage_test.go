package proxyimage

import (
	"slices"
	"testing"
)

func TestLddPaths(t *testing.T) {
	for _, tc := range []struct {
		name, out string
		want      []string
	}{
		{"dynamic", "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f80)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f81)\n",
			[]string{"/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"}},
		{"musl", "\t/lib/ld-musl-x86_64.so.1 (0x7f00)\n\tlibc.musl-x86_64.so.1 => /lib/ld-musl-x86_64.so.1 (0x7f00)\n",
			[]string{"/lib/ld-musl-x86_64.so.1", "/lib/ld-musl-x86_64.so.1"}},
		{"not found", "\tlibgone.so.1 => not found\n", nil},
		{"static", "\tnot a dynamic executable\n", nil},
	} {
		var got []string
		for _, m := range lddPath.FindAllStringSubmatch(tc.out, -1) {
			got = append(got, m[1])
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
