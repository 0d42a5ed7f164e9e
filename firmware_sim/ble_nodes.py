# Sensor-node advert builders, written to MicroPython's subset (no dataclasses, no typing, no f-strings):
# they only use struct, bytes and bytearray, plus cryptolib for encrypted BTHome. They run unchanged under the
# MicroPython unix port and under CPython (where cryptolib is absent, AES comes from `cryptography` if present).
#
# Each builder returns the service data VALUE (BTHome: after UUID 0xFCD2; pvvx/ATC1441: after UUID 0x181A) or
# the manufacturer data after the company id (Ruuvi 0x0499). The gateway's decoders in drivers/ble/ read them.

import struct

BTHOME_UUID = 0xFCD2
ENV_SENSING_UUID = 0x181A
RUUVI_COMPANY_ID = 0x0499


def _scaled(value, step_inv):
    # value * step_inv rounded to the nearest integer, half away from zero (the same on both Pythons)
    x = value * step_inv
    if x >= 0:
        return int(x + 0.5)
    return -int(-x + 0.5)


def _clip(v, lo, hi):
    if v < lo:
        return lo
    if v > hi:
        return hi
    return v


def bthome_objects(packet_id, temp_c, hum_pct, batt_pct):
    # BTHome v2 objects in ascending id order: packet id, battery, temperature (0.01), humidity (0.01)
    return struct.pack("<BBBBBhBH", 0x00, packet_id & 0xFF, 0x01, _clip(batt_pct, 0, 100),
                       0x02, _clip(_scaled(temp_c, 100), -32768, 32767),
                       0x03, _clip(_scaled(hum_pct, 100), 0, 65535))


def bthome_adv(packet_id, temp_c, hum_pct, batt_pct):
    # unencrypted BTHome v2 service data value: device info 0x40 (v2, not encrypted, regular interval)
    return b"\x40" + bthome_objects(packet_id, temp_c, hum_pct, batt_pct)


# -- AES-CCM (RFC 3610) on top of an AES-ECB block cipher, for encrypted BTHome ----------------------------------

def _aes_ecb(key):
    try:
        import cryptolib
        return cryptolib.aes(key, 1).encrypt
    except ImportError:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
        enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
        return enc.update


def _xor(a, b):
    out = bytearray(len(a))
    for i in range(len(a)):
        out[i] = a[i] ^ b[i]
    return bytes(out)


def aes_ccm_encrypt(key, nonce, plaintext, tag_len):
    # RFC 3610 with a 13-byte nonce (so L = 2), no associated data; returns ciphertext + tag
    ecb = _aes_ecb(key)
    n = len(plaintext)
    if len(nonce) != 13 or n > 0xFFFF:
        raise ValueError("nonce must be 13 bytes")
    flags = 8 * ((tag_len - 2) // 2) + 1
    mac = ecb(bytes([flags]) + nonce + struct.pack(">H", n))
    padded = plaintext + bytes((16 - n % 16) % 16)
    for i in range(0, len(padded), 16):
        mac = ecb(_xor(mac, padded[i:i + 16]))
    out = bytearray()
    counter = 1
    for i in range(0, n, 16):
        block = ecb(bytes([1]) + nonce + struct.pack(">H", counter))
        chunk = plaintext[i:i + 16]
        out.extend(_xor(chunk, block[:len(chunk)]))
        counter += 1
    s0 = ecb(bytes([1]) + nonce + struct.pack(">H", 0))
    return bytes(out) + _xor(mac[:tag_len], s0[:tag_len])


def bthome_adv_encrypted(key, mac, counter, packet_id, temp_c, hum_pct, batt_pct):
    # encrypted BTHome v2: device info 0x41, ciphertext, counter (uint32 LE), 4-byte MIC
    # key: 16 bytes; mac: 6 bytes, most significant first (as printed AA:BB:..)
    info = 0x41
    counter_le = struct.pack("<I", counter)
    nonce = mac + struct.pack("<H", BTHOME_UUID) + bytes([info]) + counter_le
    sealed = aes_ccm_encrypt(key, nonce, bthome_objects(packet_id, temp_c, hum_pct, batt_pct), 4)
    return bytes([info]) + sealed[:-4] + counter_le + sealed[-4:]


# -- RuuviTag data format 5 --------------------------------------------------------------------------------------

def ruuvi_adv(mac, temp_c=None, hum_pct=None, pres_pa=None, acc_mg=None, batt_mv=None, tx_dbm=None,
              movement=None, seq=None):
    # RAWv2 payload (24 bytes, big-endian); None means "not available" and is sent as the spec's sentinel
    t = -32768 if temp_c is None else _clip(_scaled(temp_c, 200), -32767, 32767)
    h = 65535 if hum_pct is None else _clip(_scaled(hum_pct, 400), 0, 65534)
    p = 65535 if pres_pa is None else _clip(int(pres_pa) - 50000, 0, 65534)
    if acc_mg is None:
        acc_mg = (None, None, None)
    acc = []
    for a in acc_mg:
        acc.append(-32768 if a is None else _clip(int(a), -32767, 32767))
    v = 2047 if batt_mv is None else _clip(int(batt_mv) - 1600, 0, 2046)
    tx = 31 if tx_dbm is None else _clip((int(tx_dbm) + 40) // 2, 0, 30)
    mv = 255 if movement is None else movement % 255
    sq = 65535 if seq is None else seq % 65535
    if mac is None:
        mac = b"\xff\xff\xff\xff\xff\xff"
    return struct.pack(">BhHHhhhHBH", 5, t, h, p, acc[0], acc[1], acc[2], (v << 5) | tx, mv, sq) + mac


# -- pvvx custom and ATC1441 on UUID 0x181A ----------------------------------------------------------------------

def pvvx_adv(mac, temp_c, hum_pct, batt_mv, batt_pct, counter, flags=0):
    # pvvx custom format, 15 bytes little-endian; the MAC is sent least significant byte first
    rev = bytes([mac[5], mac[4], mac[3], mac[2], mac[1], mac[0]])
    return rev + struct.pack("<hHHBBB", _clip(_scaled(temp_c, 100), -32768, 32767),
                             _clip(_scaled(hum_pct, 100), 0, 65535), batt_mv & 0xFFFF,
                             _clip(batt_pct, 0, 100), counter & 0xFF, flags & 0xFF)


def atc1441_adv(mac, temp_c, hum_pct, batt_pct, batt_mv, counter):
    # ATC1441 format, 13 bytes big-endian, MAC most significant byte first
    return mac + struct.pack(">hBBHB", _clip(_scaled(temp_c, 10), -32768, 32767), _clip(_scaled(hum_pct, 1), 0, 255),
                             _clip(batt_pct, 0, 100), batt_mv & 0xFFFF, counter & 0xFF)


def to_hex(data):
    return "".join(["%02x" % b for b in data])
