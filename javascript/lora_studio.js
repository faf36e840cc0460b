// LoRA Studio: Ctrl+Up/Down on a block-weighted <lora:...> tag.
// The WebUI's own handler edits the text after the tag's LAST ':' as the weight, so on
// <lora:name:0.75:1,1,1,...> it turns the block list into "1.1" and the list is lost. For tags whose items
// after the name are not all plain numbers, we change the multiplier instead and stop the WebUI's handler.
(function() {
    var NUMBER = /^\s*-?(\d+\.?\d*|\.\d+)\s*$/;

    function tagAround(text, pos) {
        var open = text.lastIndexOf('<', pos - 1);
        if (open < 0 || text.lastIndexOf('>', pos - 1) > open) return null;
        var close = text.indexOf('>', pos);
        if (close < 0 || (text.indexOf('<', pos) >= 0 && text.indexOf('<', pos) < close)) return null;
        var m = /^(lora|lyco):/.exec(text.slice(open + 1, close));
        return m ? {open: open, close: close, items: text.slice(open + 1, close).split(':')} : null;
    }

    function step(value, delta) {
        var v = parseFloat((parseFloat(value) + delta).toPrecision(12));
        return Number.isInteger(v) ? v + '.0' : String(v);
    }

    // Returns the new text, or null when the WebUI's own handling is right (all items numbers).
    function loraStudioEditTag(text, pos, delta) {
        var tag = tagAround(text, pos);
        if (!tag || tag.items.slice(2).every(function(x) { return NUMBER.test(x); })) return null;
        var items = tag.items;                       // [type, name, te?, unet?|blocks|named ...]
        if (items.length < 3 || !NUMBER.test(items[2])) return null;
        items[2] = step(items[2], delta);
        if (items.length > 3 && NUMBER.test(items[3])) items[3] = step(items[3], delta); // te and unet together
        return text.slice(0, tag.open + 1) + items.join(':') + text.slice(tag.close);
    }
    window.loraStudioEditTag = loraStudioEditTag;

    function onKeydown(event) {
        if (!(event.metaKey || event.ctrlKey) || (event.key != 'ArrowUp' && event.key != 'ArrowDown')) return;
        var target = event.originalTarget || (event.composedPath && event.composedPath()[0]) || event.target;
        if (!target || !target.matches || !target.matches("*:is([id*='_toprow'] [id*='_prompt'], .prompt) textarea")) return;
        if (target.selectionStart !== target.selectionEnd) return;
        var precision = (typeof opts !== 'undefined' && opts.keyedit_precision_extra) || 0.05;
        var pos = target.selectionStart;
        var text = loraStudioEditTag(target.value, pos, event.key == 'ArrowUp' ? precision : -precision);
        if (text === null) return;
        event.preventDefault();
        event.stopImmediatePropagation();
        target.value = text;
        target.selectionStart = target.selectionEnd = Math.min(pos, text.length);
        if (typeof updateInput === 'function') updateInput(target);
    }

    // Capture phase: runs before the WebUI's bubbling keydown listener.
    window.addEventListener('keydown', onKeydown, true);
})();
