// Package run owns the lifetimes of a program's long-lived parts. A Group
// runs them in tiers: each tier starts after the ones before it and stops
// before them, only once every tier started after it has ended. So the
// inputs of a pipeline stop first and its sinks last, and nothing is
// written to a part that has already gone.
//
// Every part is an actor, a function that runs until its context ends and
// returns a real error; the group owns the goroutine of each and waits for
// all of them. An actor that fails stops the whole group, as the end of
// the group's context does; one that returns nil has finished its job and
// leaves the others running.
//
// Written here rather than taken from github.com/oklog/run, the model for
// it: that group interrupts every actor at once, and klagg's writer must
// outlive its engine, and its engine its inputs.
package run

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// Group is a set of tiers of actors. The zero value is an empty group.
type Group struct {
	tiers []*Tier
}

// Tier is the actors that start together and stop together.
type Tier struct {
	name   string
	actors []actor
	before []func()
}

type actor struct {
	name string
	run  func(context.Context) error
}

// Tier adds a tier, started after those added before it and stopped
// before them.
func (g *Group) Tier(name string) *Tier {
	t := &Tier{name: name}
	g.tiers = append(g.tiers, t)
	return t
}

// Add adds an actor to t: run runs until its context ends.
func (t *Tier) Add(name string, run func(ctx context.Context) error) *Tier {
	t.actors = append(t.actors, actor{name, run})
	return t
}

// BeforeStop has f run when the group stops, after every later tier has
// ended and before t's own actors are stopped: a last word that needs t
// still running.
func (t *Tier) BeforeStop(f func()) *Tier {
	t.before = append(t.before, f)
	return t
}

// Run starts every tier, in order, and returns once ctx has ended or an
// actor has failed and every tier has then been stopped, last first. Its
// error joins the actors', each named.
func (g *Group) Run(ctx context.Context) error {
	stop, stopAll := context.WithCancel(ctx)
	defer stopAll()
	var (
		mu   sync.Mutex
		errs []error
	)
	type running struct {
		cancel context.CancelFunc
		wg     sync.WaitGroup
	}
	rs := make([]*running, len(g.tiers))
	for i, t := range g.tiers {
		r := &running{}
		rs[i] = r
		// A tier's context is not the group's: it ends only when the
		// tier's turn to stop comes.
		tctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		r.cancel = cancel
		for _, a := range t.actors {
			r.wg.Go(func() {
				if err := a.run(tctx); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("%s: %w", a.name, err))
					mu.Unlock()
					stopAll()
				}
			})
		}
	}
	<-stop.Done()
	for i := len(g.tiers) - 1; i >= 0; i-- {
		for _, f := range g.tiers[i].before {
			f()
		}
		rs[i].cancel()
		rs[i].wg.Wait()
	}
	return errors.Join(errs...)
}
