"""Serial test data shared by the unit and integration tiers."""

METER_MAP = [  # firmware_sim/modbus_node.py's input registers, as an installer would configure them
    {"name": "voltage", "address": 0, "type": "float32", "table": "input", "unit": "V"},
    {"name": "current", "address": 2, "type": "float32", "table": "input", "unit": "A"},
    {"name": "power", "address": 4, "type": "float32", "table": "input", "unit": "W"},
    {"name": "energy", "address": 6, "type": "uint32", "table": "input", "unit": "Wh"},
    {"name": "frequency", "address": 8, "type": "uint16", "table": "input", "scale": 0.01, "unit": "Hz"},
    {"name": "pf", "address": 9, "type": "int16", "table": "input", "scale": 0.001},
    {"name": "export", "address": 10, "type": "int32", "word_order": "little", "table": "input", "unit": "Wh"},
    {"name": "serial", "address": 2, "type": "uint32", "table": "holding"},
]
