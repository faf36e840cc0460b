"""Fake of the infotext format: `key: value` pairs, values JSON-quoted when they hold , : or newline."""
import json
import re

re_param = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def quote(text):
    s = str(text)
    return json.dumps(s, ensure_ascii=False) if any(c in s for c in ",\n:") else s


def unquote(text):
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def parse_generation_parameters(x):
    *lines, last = x.strip().split("\n")
    res, prompt, neg, in_neg = {}, [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_neg, line = True, line[16:].strip()
        (neg if in_neg else prompt).append(line)
    for k, v in re_param.findall(last):
        res[k] = unquote(v) if v.startswith('"') else v
    res["Prompt"] = "\n".join(prompt)
    res["Negative prompt"] = "\n".join(neg)
    return res
