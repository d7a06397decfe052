/**
 * Test helper: split a text stream into lines (what `@std/streams` would give;
 * the JSR registry is out of reach here).
 *
 * @module
 */

/** Splits text chunks into lines without their line endings. */
export class TextLineStream extends TransformStream<string, string> {
  constructor() {
    let rest = "";
    super({
      transform(chunk, controller) {
        const parts = (rest + chunk).split(/\r?\n/);
        rest = parts.pop() ?? "";
        for (const line of parts) controller.enqueue(line);
      },
      flush(controller) {
        if (rest) controller.enqueue(rest);
      },
    });
  }
}
