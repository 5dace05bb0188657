//go:build linux

package e2e

// The instance test's disk images, built by the test: for BIOS a 512-byte
// MBR boot sector (8086 code written as bytes) that prints a marker line
// on COM1 and halts, with one partition entry (so wipefs finds a "dos"
// partition table) and a pseudo-random filler after it; for UEFI a GPT
// disk (written here) whose EFI system partition (a FAT made by mtools)
// holds GRUB as EFI/BOOT/BOOTX64.EFI (grub-mkstandalone of Debian's
// grub-efi-amd64-bin), whose grub.cfg prints the marker on the serial
// port. Each boots from disk, prints its marker on the serial console and
// stays up. Checks of a disk's file from the host are here too.

import (
	"bytes"
	"crypto/sha256"
	binenc "encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf16"

	"github.com/metalfleet/metalfleet/ops/testkit"
)

// biosBootSector is the MBR's code, loaded at 0000:7c00 by the BIOS:
//
//	cli; xor ax,ax; mov ds,ax; mov si,msg; mov dx,0x3f8
//	next: lodsb; test al,al; jz done; out dx,al; jmp next
//	done: hlt; jmp done
//	msg:  (at offset 22, 0x7c16) the marker line, NUL-terminated
var biosBootSector = []byte{
	0xfa, 0x31, 0xc0, 0x8e, 0xd8, 0xbe, 0x16, 0x7c, 0xba, 0xf8, 0x03,
	0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8,
	0xf4, 0xeb, 0xfd,
}

// biosDiskImage is a raw disk image of size bytes whose MBR prints
// "\r\nMARKER\r\n" on COM1 at boot.
func biosDiskImage(marker string, size int) []byte {
	img := make([]byte, size)
	copy(img, biosBootSector)
	msg := "\r\n" + marker + "\r\n\x00"
	if len(biosBootSector)+len(msg) > 0x1be {
		panic("marker too long for the boot sector")
	}
	copy(img[len(biosBootSector):], msg)
	// One Linux partition from LBA 2048 to the end (CHS fields unused).
	p := img[0x1be:]
	p[0], p[1], p[2], p[3] = 0x00, 0xfe, 0xff, 0xff
	p[4] = 0x83
	p[5], p[6], p[7] = 0xfe, 0xff, 0xff
	binenc.LittleEndian.PutUint32(p[8:], 2048)
	binenc.LittleEndian.PutUint32(p[12:], uint32(size/512-2048))
	img[510], img[511] = 0x55, 0xaa
	fill(img[512:], marker)
	return img
}

// fill writes a pseudo-random stream seeded by seed (a sha256 chain), so
// a disk's readback is checked against bytes that are not zeros.
func fill(b []byte, seed string) {
	block := sha256.Sum256([]byte(seed))
	for off := 0; off < len(b); off += len(block) {
		copy(b[off:], block[:])
		block = sha256.Sum256(block[:])
	}
}

// GPT layout of the UEFI image, in 512-byte sectors: the ESP from 1 MiB,
// 1 MiB after it for the backup table.
const (
	gptSector   = 512
	espStart    = 2048
	espSectors  = 8192 // 4 MiB
	gptSectors  = espStart + espSectors + 2048
	gptEntries  = 128
	gptEntrySz  = 128
	gptTableLBA = 32 // sectors of the entry array (128*128/512)
)

// uefiDiskImage builds the UEFI image in dir: GRUB for x86_64-efi as
// EFI/BOOT/BOOTX64.EFI on a FAT ESP, in a GPT disk. GRUB prints marker
// on the serial port and sleeps.
func uefiDiskImage(t *testing.T, dir, marker string) []byte {
	t.Helper()
	cfg := filepath.Join(dir, "grub.cfg")
	if err := os.WriteFile(cfg, []byte("serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n"+
		"echo "+marker+"\nsleep 1000000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	efi := filepath.Join(dir, "BOOTX64.EFI")
	mods := "serial terminal echo sleep"
	run(t, "grub-mkstandalone", "-O", "x86_64-efi", "-o", efi, "--modules="+mods,
		"--install-modules="+mods+" normal configfile", "--locales=", "--fonts=", "--themes=",
		"boot/grub/grub.cfg="+cfg)
	esp := filepath.Join(dir, "esp.img")
	_ = os.Remove(esp)
	run(t, "mformat", "-i", esp, "-C", "-T", fmt.Sprint(espSectors), "-h", "64", "-s", "32", "-v", "MFESP", "::")
	run(t, "mmd", "-i", esp, "::/EFI", "::/EFI/BOOT")
	run(t, "mcopy", "-i", esp, efi, "::/EFI/BOOT/BOOTX64.EFI")
	fat, err := os.ReadFile(esp)
	if err != nil {
		t.Fatal(err)
	}
	if len(fat) != espSectors*gptSector {
		t.Fatalf("mformat made a %d-byte ESP, want %d", len(fat), espSectors*gptSector)
	}
	img := make([]byte, gptSectors*gptSector)
	copy(img[espStart*gptSector:], fat)
	writeGPT(img, marker)
	return img
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// writeGPT writes a protective MBR and the primary and backup GPT of one
// EFI system partition (espStart, espSectors) into img.
func writeGPT(img []byte, seed string) {
	le := binenc.LittleEndian
	n := uint64(len(img) / gptSector)
	// Protective MBR: one partition of type 0xee over the disk.
	p := img[0x1be:]
	p[1], p[2], p[3], p[4], p[5], p[6], p[7] = 0x00, 0x02, 0x00, 0xee, 0xff, 0xff, 0xff
	le.PutUint32(p[8:], 1)
	le.PutUint32(p[12:], uint32(min(n-1, 0xffffffff)))
	img[510], img[511] = 0x55, 0xaa
	// The entry array: the ESP.
	entries := make([]byte, gptEntries*gptEntrySz)
	copy(entries[0:], guidBytes("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"))
	copy(entries[16:], seedGUID(seed+"/part"))
	le.PutUint64(entries[32:], espStart)
	le.PutUint64(entries[40:], espStart+espSectors-1)
	for i, c := range utf16.Encode([]rune("EFI System")) {
		le.PutUint16(entries[56+2*i:], c)
	}
	entriesCRC := crc32.ChecksumIEEE(entries)
	diskGUID := seedGUID(seed + "/disk")
	header := func(my, alt, table uint64) []byte {
		h := make([]byte, 92)
		copy(h, "EFI PART")
		le.PutUint32(h[8:], 0x00010000)
		le.PutUint32(h[12:], 92)
		le.PutUint64(h[24:], my)
		le.PutUint64(h[32:], alt)
		le.PutUint64(h[40:], 2+gptTableLBA)     // first usable
		le.PutUint64(h[48:], n-1-gptTableLBA-1) // last usable
		copy(h[56:], diskGUID)
		le.PutUint64(h[72:], table)
		le.PutUint32(h[80:], gptEntries)
		le.PutUint32(h[84:], gptEntrySz)
		le.PutUint32(h[88:], entriesCRC)
		le.PutUint32(h[16:], crc32.ChecksumIEEE(h))
		return h
	}
	copy(img[1*gptSector:], header(1, n-1, 2))
	copy(img[2*gptSector:], entries)
	backupTable := n - 1 - gptTableLBA
	copy(img[backupTable*gptSector:], entries)
	copy(img[(n-1)*gptSector:], header(n-1, 1, backupTable))
}

// guidBytes is a GUID in GPT's byte order (the first three fields
// little-endian).
func guidBytes(s string) []byte {
	h, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(h) != 16 {
		panic("bad GUID " + s)
	}
	return []byte{h[3], h[2], h[1], h[0], h[5], h[4], h[7], h[6], h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]}
}

// seedGUID is a version-4-shaped GUID made from seed.
func seedGUID(seed string) []byte {
	s := sha256.Sum256([]byte(seed))
	g := s[:16]
	g[7] = g[7]&0x0f | 0x40
	g[8] = g[8]&0x3f | 0x80
	return g
}

// --- a disk's file, read from the host ---

// fileSHA is the sha256 (hex) of the first n bytes of file.
func fileSHA(file string, n int64) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if got, err := io.Copy(h, io.LimitReader(f, n)); err != nil || got != n {
		return "", fmt.Errorf("%s: read %d of %d bytes: %v", filepath.Base(file), got, n, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// nonZero is the offset of the first byte that is not zero in file's
// [off, off+n), or -1.
func nonZero(file string, off, n int64) (int64, error) {
	f, err := os.Open(file)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		return 0, err
	}
	for i, c := range b {
		if c != 0 {
			return off + int64(i), nil
		}
	}
	return -1, nil
}

// wipefsList is what `wipefs --no-act FILE` prints: the signatures it
// finds on the disk's file (empty: none).
func wipefsList(file string) (string, error) {
	out, err := exec.Command("wipefs", "--no-act", file).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("wipefs --no-act %s: %v: %s", file, err, bytes.TrimSpace(out))
	}
	return strings.TrimSpace(string(out)), nil
}

// TestInstanceImagesQEMU boots the instance test's disk images in QEMU
// alone (no BMC, no Metalfleet): BIOS and UEFI, each must print its
// marker on the serial console. When it fails, the images are at fault,
// not Metalfleet.
func TestInstanceImagesQEMU(t *testing.T) {
	e2eNeed(t, map[string]string{ovmfCode: "package ovmf", ovmfVars: "package ovmf"})
	needImageTools(t)
	dir := t.TempDir()
	for _, uefi := range []bool{false, true} {
		name := map[bool]string{false: "bios", true: "uefi"}[uefi]
		t.Run(name, func(t *testing.T) {
			marker := "MF-E2E-DISK-" + strings.ToUpper(name) + "-" + fmt.Sprint(time.Now().UnixNano()%1e6)
			var img []byte
			if uefi {
				img = uefiDiskImage(t, t.TempDir(), marker)
			} else {
				img = biosDiskImage(marker, 4<<20)
			}
			disk := filepath.Join(dir, name+".img")
			if err := os.WriteFile(disk, img, 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := wipefsList(disk); err != nil || out == "" {
				t.Errorf("wipefs finds no signature on the %s image (%v): %q", name, err, out)
			} else {
				t.Logf("wipefs --no-act on the %s image:\n%s", name, out)
			}
			serial := filepath.Join(dir, name+".serial")
			args := []string{"-accel", "tcg", "-machine", "pc", "-m", "256", "-display", "none", "-vga", "none",
				"-monitor", "none", "-nic", "none", "-chardev", "file,id=s0,path=" + serial, "-serial", "chardev:s0",
				"-drive", "if=none,id=d1,file=" + disk + ",format=raw", "-device", "virtio-blk-pci,drive=d1,bootindex=1",
				"-boot", "strict=on"}
			if uefi {
				vars := filepath.Join(dir, "vars.fd")
				b, err := os.ReadFile(ovmfVars)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(vars, b, 0o644); err != nil {
					t.Fatal(err)
				}
				args = append(args, "-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+ovmfCode,
					"-drive", "if=pflash,format=raw,unit=1,file="+vars)
			}
			cmd := exec.Command("qemu-system-x86_64", args...)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			go func() { _ = cmd.Wait(); close(done) }()
			defer func() { _ = cmd.Process.Kill(); <-done }()
			start := time.Now()
			testkit.EventuallyEvery(t, 3*time.Minute, 100*time.Millisecond, "the "+name+" image's marker on the serial console", func() bool {
				select {
				case <-done:
					t.Fatalf("QEMU exited: %s", out.String())
				default:
				}
				b, _ := os.ReadFile(serial)
				return strings.Contains(cleanConsole(b), marker)
			})
			t.Logf("%s image (%d bytes): marker on the console %.1fs after QEMU started", name, len(img), time.Since(start).Seconds())
		})
	}
}

// needImageTools: what building the UEFI image needs (Debian packages
// grub-efi-amd64-bin and mtools).
func needImageTools(t *testing.T) {
	t.Helper()
	e2eNeed(t, map[string]string{"/usr/lib/grub/x86_64-efi/normal.mod": "package grub-efi-amd64-bin"})
	e2eNeed(t, map[string]string{"/usr/bin/grub-mkstandalone": "package grub-efi-amd64-bin",
		"/usr/bin/mformat": "package mtools", "/usr/bin/mmd": "package mtools", "/usr/bin/mcopy": "package mtools",
		"/usr/sbin/wipefs": "package util-linux"})
}
