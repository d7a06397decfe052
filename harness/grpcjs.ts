/**
 * Harness: what grpc-js itself holds open, read through its channelz handlers
 * (public API, on by default), to check that closing a client releases it.
 *
 * @module
 */
import * as grpc from "@grpc/grpc-js";

/** One open grpc-js channel, as channelz lists it. */
export interface OpenChannel {
  /** Its channelz id. */
  readonly id: number;
  /** The target it was made for, e.g. `dns:127.0.0.1:2379`. */
  readonly target: string;
  /** The channelz ids of the subchannels (connections) it uses or is making. */
  readonly subchannels: readonly number[];
}

interface TopChannels {
  channel: {
    ref: { channel_id: string };
    data: { target: string };
    subchannel_ref: { subchannel_id: string }[];
  }[];
  end: boolean;
}

/** The grpc-js channels open in this process (made and not closed yet). */
export function openChannels(): OpenChannel[] {
  const handlers = grpc.getChannelzHandlers();
  const channels: OpenChannel[] = [];
  let start = 0;
  while (true) {
    let page: TopChannels | undefined;
    handlers.GetTopChannels(
      { request: { start_channel_id: start, max_results: 1000 } } as never,
      ((error: Error | null, value: TopChannels) => {
        if (error) throw error;
        page = value;
      }) as never,
    );
    if (!page) throw new Error("grpc-js channelz answered GetTopChannels asynchronously");
    for (const channel of page.channel) {
      const id = Number(channel.ref.channel_id);
      channels.push({
        id,
        target: channel.data.target,
        subchannels: channel.subchannel_ref.map((ref) => Number(ref.subchannel_id)),
      });
      start = id + 1;
    }
    if (page.end || page.channel.length === 0) return channels;
  }
}
