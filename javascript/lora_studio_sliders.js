// LoRA Studio: per-block sliders for the <lora:...> tag under the prompt cursor.
// The panel (lora_studio_webui/block_sliders.py) holds the block names of each format and the presets' values;
// moving a slider writes the whole list back into the tag (its lbw=/w= value, its positional block item, or a
// new lbw= item), through updateInput so Gradio sees the change.
(function() {
    var NUMBER = /^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$/;

    function tagAt(text, pos) {
        var open = text.lastIndexOf('<', pos - 1 < 0 ? 0 : pos - 1);
        if (open < 0) return null;
        var close = text.indexOf('>', open);
        if (close < 0 || close < pos - 1 || text.slice(open + 1, close).indexOf('<') >= 0) return null;
        var items = text.slice(open + 1, close).split(':');
        if (!/^(lora|lyco)$/.test(items[0]) || items.length < 2) return null;
        var at = -1, named = false;
        for (var i = 2; i < items.length; i++) {
            var m = /^\s*(lbw|w)\s*=(.*)$/.exec(items[i]);
            if (m) { at = i; named = true; if (m[1] == 'lbw') break; }
        }
        if (at < 0) {   // positional: after te and an optional unet (docs/spec/prompt_syntax.md)
            if (items.length > 3 && items[3].indexOf('=') < 0 && !NUMBER.test(items[3])) at = 3;
            else if (items.length > 4 && NUMBER.test(items[3]) && items[4].indexOf('=') < 0 && !NUMBER.test(items[4])) at = 4;
        }
        var blocks = at < 0 ? null : (named ? items[at].split('=').slice(1).join('=') : items[at]).trim();
        return {open: open, close: close, items: items, name: items[1], at: at, named: named, blocks: blocks};
    }

    function number(v) {
        var x = parseFloat(Number(v).toPrecision(12));
        return String(x);
    }

    // The tag text with its block list replaced by `values` (strings); returns the new prompt text.
    function setBlocks(text, tag, values) {
        var items = tag.items.slice();
        var list = values.join(',');
        if (tag.at < 0) items.push('lbw=' + list);
        else if (tag.named) items[tag.at] = items[tag.at].split('=')[0] + '=' + list;
        else items[tag.at] = list;
        if (tag.at < 0 && items.length == 2) items.splice(2, 0, '1');
        return text.slice(0, tag.open + 1) + items.join(':') + text.slice(tag.close);
    }

    function panelData(panel) {
        return {formats: JSON.parse(panel.dataset.formats || '{}'), presets: JSON.parse(panel.dataset.presets || '{}')};
    }

    // The tokens to show for a tag: its list, a known preset's values, or all 1 in the chosen format.
    function tokensFor(tag, data, count) {
        if (tag.blocks && tag.blocks.indexOf(',') >= 0) return tag.blocks.split(',').map(function(s) { return s.trim(); });
        if (tag.blocks && data.presets[tag.blocks]) return data.presets[tag.blocks].slice();
        var out = [];
        for (var i = 0; i < count; i++) out.push('1');
        return out;
    }

    function render(panel, textarea) {
        var pos = textarea.selectionStart, text = textarea.value;
        var tag = tagAt(text, pos);
        var body = panel.querySelector('.lora-studio-sliders-body');
        var head = panel.querySelector('.lora-studio-sliders-head');
        var fmt = panel.querySelector('.lora-studio-sliders-format');
        if (!tag) { head.textContent = 'Put the cursor in a <lora:…> tag.'; body.innerHTML = ''; panel.loraTag = null; return; }
        var data = panelData(panel);
        var tokens = tokensFor(tag, data, parseInt(panel.dataset.chosen || '17', 10));  // no list: the format picked last
        var names = data.formats[String(tokens.length)];
        if (!names) { head.textContent = tag.name + ': ' + tokens.length + ' values is not a block format (12/17/20/26).'; body.innerHTML = ''; return; }
        fmt.value = String(tokens.length);
        head.textContent = tag.name + (tag.blocks && tag.blocks.indexOf(',') < 0 ? ' (preset ' + tag.blocks + ')' : '');
        panel.loraTag = {textarea: textarea, pos: pos};
        body.innerHTML = '';
        tokens.forEach(function(tok, i) {
            var row = document.createElement('label');
            row.className = 'lora-studio-slider';
            var span = document.createElement('span');
            span.textContent = names[i];
            var input = document.createElement('input');
            input.type = 'range'; input.min = '-1'; input.max = '2'; input.step = '0.05';
            input.dataset.block = names[i];
            var out = document.createElement('output');
            if (NUMBER.test(tok)) { input.value = tok; out.textContent = number(tok); }
            else { input.disabled = true; input.dataset.token = tok; out.textContent = tok; }  // R/U/X kept
            input.addEventListener('input', function() { out.textContent = number(input.value); write(panel); });
            row.appendChild(span); row.appendChild(input); row.appendChild(out);
            body.appendChild(row);
        });
        requestPreview(panel, tag.name, currentValues(panel));
    }

    // The norms chart beside the sliders (block_sliders.preview_html): the request goes through a hidden
    // textbox + button of the panel's tab, debounced, and only when the LoRA or the values changed.
    function requestPreview(panel, name, values) {
        var tab = panel.dataset.prompt.replace(/_prompt$/, '');
        var box = document.querySelector('#lora_studio_sliders_' + tab + '_req textarea');
        var go = document.getElementById('lora_studio_sliders_' + tab + '_go');
        if (!box || !go) return;
        var req = JSON.stringify({name: name, values: values});
        if (req == panel.dataset.lastRequest) return;
        clearTimeout(panel.previewTimer);
        panel.previewTimer = setTimeout(function() {
            panel.dataset.lastRequest = req;
            box.value = req;
            if (typeof updateInput === 'function') updateInput(box);
            go.click();
        }, 250);
    }

    function currentValues(panel) {
        return Array.prototype.map.call(panel.querySelectorAll('.lora-studio-sliders-body input'), function(inp) {
            return inp.disabled ? inp.dataset.token : number(inp.value);
        });
    }

    function write(panel) {
        var st = panel.loraTag;
        if (!st) return;
        var ta = st.textarea, tag = tagAt(ta.value, st.pos);
        if (!tag) return;
        var values = currentValues(panel);
        ta.value = setBlocks(ta.value, tag, values);
        requestPreview(panel, tag.name, values);
        ta.selectionStart = ta.selectionEnd = Math.min(st.pos, ta.value.length);
        if (typeof updateInput === 'function') updateInput(ta);
    }

    function hook(panel) {
        if (panel.dataset.hooked) return;
        var ta = document.querySelector('#' + panel.dataset.prompt + ' textarea');
        if (!ta) return;
        panel.dataset.hooked = '1';
        ['click', 'keyup', 'focus'].forEach(function(ev) { ta.addEventListener(ev, function() { render(panel, ta); }); });
        panel.querySelector('.lora-studio-sliders-format').addEventListener('change', function() {
            var st = panel.loraTag;
            if (!st) return;
            var tag = tagAt(st.textarea.value, st.pos);
            if (tag && !(tag.blocks && tag.blocks.indexOf(',') >= 0)) {   // no list yet: show that many sliders
                panel.dataset.chosen = this.value;
            var n = parseInt(this.value, 10), ones = [];
                for (var i = 0; i < n; i++) ones.push('1');
                st.textarea.value = setBlocks(st.textarea.value, tag, ones);
                if (typeof updateInput === 'function') updateInput(st.textarea);
            }
            render(panel, st.textarea);
        });
    }

    function hookAll() {
        Array.prototype.forEach.call(document.querySelectorAll('.lora-studio-sliders'), hook);
    }

    window.loraStudioSliders = {tagAt: tagAt, setBlocks: setBlocks, hookAll: hookAll, render: render,
                                 requestPreview: requestPreview};
    if (typeof onUiLoaded === 'function') onUiLoaded(hookAll);
    if (typeof onUiUpdate === 'function') onUiUpdate(hookAll);
    document.addEventListener('DOMContentLoaded', hookAll);
})();
